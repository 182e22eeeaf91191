"""The QEMU test driver (build machine only): boards, QEMU command lines, machines, LANs, the test kit."""
