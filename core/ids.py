"""The range of ids the cluster's people get: the same uid on every host (builder/ids.py
assigns them; the 9P server and mounts rely on it). Debian gives 1000-59999 to users."""

FIRST_ID = 1000
LAST_ID = 59999
