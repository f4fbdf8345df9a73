"""OpenAI-compatible HTTP server for a guarded model (`babelgate serve BUNDLE`).

from babelgate.server import Engine, ServerConfig, create_app, BackgroundServer
app = create_app(Engine(handle, gate), ServerConfig(api_key="secret"))
"""

from __future__ import annotations

from babelgate.server.app import ServerConfig, create_app
from babelgate.server.engine import Engine
from babelgate.server.limits import ServerLimits
from babelgate.server.runner import BackgroundServer, serve

__all__ = ["BackgroundServer", "Engine", "ServerConfig", "ServerLimits", "create_app", "serve"]
