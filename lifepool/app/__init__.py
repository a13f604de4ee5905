"""The Modal-style face of lifepool: ``App``/``Stub``, decorators, ``FunctionCall``, ``Retries``, ``Secret``.

A thin layer over :class:`lifepool.LifecyclePool` (one pool per function, per
class and per set of class parameters); it schedules nothing itself. The
containers never import it unless they unpickle something of it. Modules:

    _app.py      App, Stub, local_entrypoint, app.run(), the running app
    _cls.py      Function, Cls / Obj, parameter, method, the Stub methods
    _invoke.py   .remote / .spawn / .map / ... and their .aio twins
    _calls.py    FunctionCall, Retries of calls that raised (one timer thread per app)
    _options.py  decorator options, Retries, and make_pool (the one place pools are made)
    _secrets.py  Secret, Image (a stand-in)
    _cli.py      ``lifepool run``
    exception.py Modal's exception names
"""

from . import exception
from ._app import App, LocalEntrypoint, Stub, current_function_call_id, current_input_id, is_local
from ._calls import FunctionCall
from ._cls import Cls, Function, Obj, method, parameter
from ._options import Retries
from ._secrets import Image, Secret

__all__ = [
    "App",
    "Cls",
    "Function",
    "FunctionCall",
    "Image",
    "LocalEntrypoint",
    "Obj",
    "Retries",
    "Secret",
    "Stub",
    "current_function_call_id",
    "current_input_id",
    "exception",
    "is_local",
    "method",
    "parameter",
]
