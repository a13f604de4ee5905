"""The ETL program in today's spelling: a Secret gives the containers ``DATABASE_URI``; exit hooks take no arguments."""

import os
import sqlite3

from lifepool import modal

app = modal.App("etl")


@app.cls(secrets=[modal.Secret.from_dict({"DATABASE_URI": "etl.sqlite"})], max_containers=1)
class ETLPipeline:
    @modal.enter()
    def connect(self):
        self.connection = sqlite3.connect(os.environ["DATABASE_URI"])

    @modal.method()
    def run(self):
        self.connection.execute("CREATE TABLE IF NOT EXISTS runs (pid INTEGER)")
        self.connection.execute("INSERT INTO runs VALUES (?)", (os.getpid(),))
        self.connection.commit()

    @modal.exit()
    def close(self):
        self.connection.close()
        print("exit: connection closed", flush=True)


@app.local_entrypoint()
def main():
    ETLPipeline().run.remote()
