"""Code both sides share: the resolved profile model, disk formats, the event stream, exit codes.

Layer 3: runs on the build machine and on every host, and imports nothing of ours outside core/.
"""
