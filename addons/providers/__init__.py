"""One module per provider type: its routes, how its key is carried, its request rewrites, which wire
parser reads each of its APIs, and its error shapes (errors.py). Values only: no network, no store."""
