"""Disk formats written at build time and read or rewritten on hosts: GPT, boot menus, ext4 via debugfs."""
