"""The first program in today's Modal spelling: ``lifepool run examples/modal_style/model_app.py --x 4``.

With ``import modal`` in place of ``from lifepool import modal``, this is a Modal program.
"""

import os
import pickle

import toy_model

from lifepool import modal

app = modal.App("model")


@app.cls(max_containers=1)
class Model:
    @modal.enter()
    def load(self):
        self.model = pickle.load(open("model.pickle", "rb"))
        print(f"enter: model loaded in pid {os.getpid()}", flush=True)

    @modal.method()
    def predict(self, x):
        return self.model.predict(x)

    @modal.exit()
    def close(self):
        print("exit: no arguments", flush=True)


@app.local_entrypoint()
def main(x: float = 3.0):
    toy_model.save("model.pickle")
    print("prediction:", Model().predict.remote(x))
