"""The reference's first program, in its (2023) spelling: ``lifepool run examples/modal_style/model_stub.py``.

``__enter__`` loads the model once per container; ``.call`` blocks. (The
reference opens the pickle in text mode, which ``pickle.load`` refuses: this
opens it with "rb".)
"""

import os
import pickle

import toy_model

import lifepool

stub = lifepool.Stub()


class Model:
    def __enter__(self):
        self.model = pickle.load(open("model.pickle", "rb"))
        print(f"enter: model loaded in pid {os.getpid()}", flush=True)

    @stub.function
    def predict(self, x):
        return self.model.predict(x)

    def __exit__(self, exc_type, exc_value, traceback):
        print(f"exit: {exc_type}", flush=True)


@stub.local_entrypoint
def main(x: float = 3.0):
    toy_model.save("model.pickle")  # (the model the containers load)
    print("prediction:", Model().predict.call(x))
