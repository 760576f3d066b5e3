"""Hardware behind interfaces; the backend is chosen by the cabinet's configuration."""

from edge.hardware.interfaces import DoorSwitch, Lock, WeightSource

__all__ = ["DoorSwitch", "Lock", "WeightSource"]
