"""The storage watch: a floor of free space in WARDEN_HOME for the guests' disks."""
