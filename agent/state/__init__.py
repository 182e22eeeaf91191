"""Facts the agent serves as synthetic files: hardware, operating system, services."""
