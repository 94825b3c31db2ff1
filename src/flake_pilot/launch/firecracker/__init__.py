"""firecracker-pilot's warm path (see flake_pilot.launch)."""
