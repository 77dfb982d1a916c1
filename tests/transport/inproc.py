"""A broker node run inside the test process (its own uvloop loop in a thread), for the tests
that need to see what reaches the broker's hook points (authentication, authorisation) or to
hold the node in the middle of starting. Its listeners are real sockets on 127.0.0.1 that the
real peers (mosquitto_pub, curl, ...) talk to."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import uvloop
import yaml

from fluxmq.app import Node
from fluxmq.broker.hooks import ClientInfo, Hooks
from fluxmq.config import load_config


class RecordingHooks(Hooks):
    """Allows everything except publishing under `deny_prefix`; records what it was asked."""

    def __init__(self, deny_prefix: str = "denied/") -> None:
        self.infos: list[ClientInfo] = []
        self.publish_checks: list[tuple[str, str | None, str]] = []
        self.deny_prefix = deny_prefix

    def authenticate(self, info: ClientInfo) -> int:
        self.infos.append(info)
        return 0

    def authorize_publish(self, client_id, username, topic) -> bool:
        self.publish_checks.append((client_id, username, topic))
        return not topic.startswith(self.deny_prefix)

    @property
    def checks_publish(self) -> bool:
        return True


class InProcessNode:
    """`with InProcessNode(tmp_path, config_dict) as n:` ... `n.node`, `n.hooks`."""

    def __init__(self, workdir: Path, config: dict, hooks: Hooks | None = None,
                 wait_started: bool = True) -> None:  # fmt: skip
        path = workdir / "inproc.yaml"
        # Each node keeps its storage in its own directory (the default ./data would be shared
        # by nodes of parallel test workers, and the second one refused).
        config = {"storage": {"type": "memory", "path": str(workdir / "data")}, **config}
        path.write_text(yaml.safe_dump(config))
        self.cfg = load_config(path)
        self.hooks = hooks or RecordingHooks()
        self.wait_started = wait_started
        self.node: Node | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        self.node = Node(self.cfg)
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:
            self.error = exc
            self.started.set()
            return
        self.started.set()
        loop.run_forever()
        loop.run_until_complete(self.node.stop())
        loop.close()

    async def _start(self) -> None:
        task = asyncio.ensure_future(self.node.start())
        while self.node.broker is None and not task.done():
            await asyncio.sleep(0.005)
        if self.node.broker is not None:
            self.node.broker.hooks = self.hooks
        await task

    def __enter__(self) -> InProcessNode:
        self._thread.start()
        if self.wait_started:
            self.wait()
        return self

    def wait(self, timeout: float = 15.0) -> None:
        assert self.started.wait(timeout), "the node did not start"
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc) -> None:
        if self.loop is not None and self.error is None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(20)
