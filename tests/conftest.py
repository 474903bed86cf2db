"""Suite-wide settings.

* OMP_WAIT_POLICY=PASSIVE must be set before torch loads OpenMP: with the default (active
  spin-waiting) two threads on a busy 2-core machine make every small op wait for a core,
  measured here as 10-100x slower test modules.
* One torch thread: the suite is thousands of small tensor ops (dense matrices from basis
  vectors, tiny networks, samplers on small batches), where a second thread costs more in
  wake-ups than it saves. Subprocesses started by tests set their own threads.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A models folder with untrained tiny-32 prior/eps/palette checkpoints (one per test module)."""
    from zoo_helpers import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def models_env(tiny_root, monkeypatch):
    """``tiny_root`` made the model zoo's folder (``EXACTPOST_MODELS``) for one test."""
    from exactpost.inference import zoo

    monkeypatch.setenv(zoo.ENV_VAR, str(tiny_root))
    return tiny_root
