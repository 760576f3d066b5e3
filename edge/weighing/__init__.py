"""Raw counts to trustworthy lane levels: filtering, calibration, stability and settling."""

from edge.weighing.filter import ChannelFilter
from edge.weighing.levels import LevelTracker, WeighingConfig, WindowStats

__all__ = ["ChannelFilter", "LevelTracker", "WeighingConfig", "WindowStats"]
