"""The reference's ETL program, in its spelling, with SQLite for the database (``DATABASE_URI`` is a file name).

Its async ``main`` calls ``.call()`` without ``await``: the call starts at
once, and the app waits for it before the exit hook closes the connection.
"""

import os
import sqlite3

import lifepool

stub = lifepool.Stub()


class ETLPipeline:
    def __enter__(self):
        self.connection = sqlite3.connect(os.environ.get("DATABASE_URI", "etl.sqlite"))

    @stub.function
    def run(self):
        # Run some queries
        self.connection.execute("CREATE TABLE IF NOT EXISTS runs (pid INTEGER)")
        self.connection.execute("INSERT INTO runs VALUES (?)", (os.getpid(),))
        self.connection.commit()

    def __exit__(self, exc_type, exc_value, traceback):
        self.connection.close()
        print(f"exit: connection closed ({exc_type})", flush=True)


@stub.local_entrypoint
async def main():
    ETLPipeline().run.call()
