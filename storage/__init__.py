"""Persistence over PostgreSQL: pool, migrations and one query module per table.

Raw SQL through psycopg 3; rows come back as frozen dataclasses, never protobuf.
"""
