"""The reference's async program, in its spelling: ``__aenter__`` on the container's loop, ``await ....call(x)``."""

import asyncio

import lifepool

stub = lifepool.Stub()


async def load_cache():
    await asyncio.sleep(0)
    return {"greeting": "hello"}


async def do_some_async_stuff(x, cache):
    await asyncio.sleep(0)
    return f"{cache['greeting']} {x}"


class Processor:
    async def __aenter__(self):
        self.cache = await load_cache()

    @stub.function
    async def run(self, x):
        return await do_some_async_stuff(x, self.cache)

    async def __aexit__(self, exc_type, exc_value, traceback):
        print(f"aexit: {exc_type}", flush=True)


@stub.local_entrypoint
async def main(x: str = "world"):
    print("result:", await Processor().run.call(x))
