"""Transports carry frames between agents and the coordinator; none knows any algorithm."""
