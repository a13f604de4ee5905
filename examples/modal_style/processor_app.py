"""The async program in today's spelling: an async ``@modal.enter()``, ``await ....remote.aio(x)``."""

import asyncio

from lifepool import modal

app = modal.App("processor")


async def load_cache():
    await asyncio.sleep(0)
    return {"greeting": "hello"}


async def do_some_async_stuff(x, cache):
    await asyncio.sleep(0)
    return f"{cache['greeting']} {x}"


@app.cls(max_containers=1)
class Processor:
    @modal.enter()
    async def load(self):
        self.cache = await load_cache()

    @modal.method()
    async def run(self, x):
        return await do_some_async_stuff(x, self.cache)


@app.local_entrypoint()
async def main(x: str = "world"):
    print("result:", await Processor().run.remote.aio(x))
