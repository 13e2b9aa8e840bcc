"""cluster: Ray job entry points and cluster configurations (issue 3)."""
