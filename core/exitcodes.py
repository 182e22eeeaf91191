"""Exit codes of every clusterctl program: the build machine's ``clusterctl``, the host's, first boot.

One place, so a script or a test reads the same number the same way whichever program it ran.
"""

OK = 0
FAILED = 1  # the work was tried and did not succeed (a stage, an install, a boot)
USAGE = 2  # bad input: a profile error, a wrong argument; nothing was changed
QUIT = 1  # the person at the wizard quit without choosing
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
