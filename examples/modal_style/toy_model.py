"""A model small enough to pickle: what the model examples load in their containers' enter hook."""

import pickle


class LinearModel:
    def __init__(self, slope: float, intercept: float) -> None:
        self.slope, self.intercept = slope, intercept

    def predict(self, x: float) -> float:
        return self.slope * x + self.intercept


def save(path: str = "model.pickle") -> None:
    with open(path, "wb") as file:
        pickle.dump(LinearModel(2.0, 1.0), file)
