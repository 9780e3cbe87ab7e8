import contextlib
import tempfile
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and two threads on a busy 2-core machine stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def app_server(**settings: str):
    """The Gradio app on 127.0.0.1 under HEADSPLAT_* `settings` (and a shared avatar cache); its URL."""
    import app

    with pytest.MonkeyPatch.context() as env:
        for name, value in settings.items():
            env.setenv(f"HEADSPLAT_{name.upper()}", value)
        env.setenv("HEADSPLAT_CACHE", str(Path(tempfile.gettempdir()) / "headsplat-app-tests"))
        demo = app.build_demo()
        _, url, _ = demo.launch(
            prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **app.launch_options()
        )
        try:
            yield url
        finally:
            demo.close()
