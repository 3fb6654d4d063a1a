"""The round: its rules as a state machine with no socket, thread or clock of its own.

`rounds.RoundCore` is what the coordinator service (coordinator/engine.py) and every
simulation backend run; `messages` is the vocabulary a strategy, the core and the
fleets share; `routing` turns share/gather instructions into what each fleet can carry.
"""
