"""Conversions between nfrecon geometry and other toolkits (ASTRA, tomosipo, TIGRE/NAF, RTK).

Each toolkit lives in its own module and is imported lazily, so that none of them is a
hard dependency of nfrecon.
"""
