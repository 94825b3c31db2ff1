"""sci: the guest init (PID 1) of flake-pilot VMs. Standard library only."""
