"""r1kit: the DeepSeek-R1 system end to end."""
__version__ = "0.1.0"
