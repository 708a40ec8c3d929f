"""Selective classification under corruption: the risk a head keeps when it may abstain (Geifman & El-Yaniv
2017)."""
