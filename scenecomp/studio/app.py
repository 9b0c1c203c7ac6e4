"""scenecomp-studio: compose a scene by hand in a local web page, object by object.

    scenecomp-studio                                         # the shipped model on http://127.0.0.1:7860
    scenecomp-studio --checkpoint runs/shapes64/composer.safetensors --port 8000

The page (``static/``: plain HTML, CSS and JavaScript, nothing fetched from
elsewhere) talks JSON to this server, which keeps one `Scene` per browser tab
(`sessions.py`) and applies each edit through the `Scene` API, so an edit
repaints only the objects from the first one it changes.

HTTP API (every answer to a change is the tab's new state, see `state`):

- ``POST /api/session`` (``{"seed": n}`` optional): a new scene;
- ``GET /api/session/{id}``: the state;
- ``POST /api/session/{id}/edit`` with one edit: ``{"op": "background", "seed": n | null}``
  (null: a random seed), ``{"op": "add", "category": c, "mask": shape, "seed": n | null}``
  (shape: ``{"rle": ...}``, ``{"bbox": ...}`` or ``{"polygon": ...}`` in the model's pixels),
  ``{"op": "reroll", "index": i, "seed": n | null}``, ``{"op": "category", "index": i, "category": c}``,
  ``{"op": "move", "index": i, "dx": x, "dy": y, "scale": s}``, ``{"op": "reorder", "index": i, "to": j}``,
  ``{"op": "remove", "index": i}``, ``{"op": "clear"}``, ``{"op": "undo"}``, ``{"op": "redo"}``;
- ``POST /api/session/{id}/layout?name=FILE`` with a layout file as the body: open it;
- ``GET /api/session/{id}/scene.png``, ``.../layout.json``, ``.../scene.ora``: downloads.

Errors answer ``{"error": message}`` with status 400 (bad input), 404 (no such
session), 413 (body over `MAX_BODY`) or 500; the server keeps running.
"""

from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import json
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scenecomp.compose import BundleError, Composer, CompositionError, Scene
from scenecomp.layout import SEED_LIMIT, Layout, LayoutError, parse_json, quote
from scenecomp.studio.sessions import SessionGone, Sessions

STATIC = Path(__file__).parent / "static"
MAX_BODY = 4 << 20  # bytes of any request body: an edit, a mask or an uploaded layout
MAX_OBJECTS = 100  # objects in a studio scene (a layout file may hold up to 1,000)
MAX_UPLOAD_SIDE = 4096  # pixels a side of an uploaded layout's canvas (masks are rasterised at it first)
MASK_SHAPES = ("rle", "bbox", "polygon")  # never "mask": that names a file on the server
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


class StudioError(Exception):
    """Bad input to the studio, answered with ``status`` and the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- edits


def random_seed() -> int:
    return secrets.randbelow(SEED_LIMIT)


def apply_edit(scene: Scene, edit) -> Scene:
    """The scene after one edit (module docstring); `Scene` checks indices, categories, seeds and masks."""
    if not isinstance(edit, dict):
        raise StudioError(f"an edit must be a JSON object with an 'op', got {type(edit).__name__}")
    op = edit.get("op")

    def arg(name, default=...):
        if name in edit:
            return edit[name]
        if default is ...:
            raise StudioError(f"edit {op!r} needs {name!r}")
        return default

    def seed():
        value = arg("seed", None)
        return random_seed() if value is None else value

    if op == "background":
        return scene.with_background(seed())
    if op == "clear":
        return scene.composer.background(scene.background_seed)
    if op == "add":
        if len(scene) >= MAX_OBJECTS:
            raise StudioError(
                f"the scene already holds {len(scene)} objects, the studio's limit; delete one before adding another"
            )
        return scene.add(arg("category"), _mask_shape(arg("mask")), seed=arg("seed", None))
    if op == "reroll":
        return scene.replace(arg("index"), seed=seed())
    if op == "category":
        return scene.replace(arg("index"), category=arg("category"))
    if op == "move":
        return scene.move(arg("index"), dx=arg("dx", 0), dy=arg("dy", 0), scale=arg("scale", 1.0))
    if op == "reorder":
        return scene.reorder(arg("index"), arg("to"))
    if op == "remove":
        return scene.remove(arg("index"))
    ops = "background, clear, add, reroll, category, move, reorder, remove, undo, redo"
    raise StudioError(f"unknown edit op {quote(str(op))}; known: {ops}")


def _mask_shape(shape) -> dict:
    if not (isinstance(shape, dict) and len(shape) == 1 and next(iter(shape)) in MASK_SHAPES):
        raise StudioError(
            'mask must be one shape: {"rle": {...}}, {"bbox": [x, y, w, h]} or '
            '{"polygon": [[x, y], ...]} in the model\'s pixels'
        )
    return shape


def open_layout(composer: Composer, body: bytes, name: str) -> Scene:
    """A scene from an uploaded layout file's bytes; errors name the file, the object and the problem."""
    data = parse_json(body, name)
    if isinstance(data, dict):
        objects = data.get("objects")
        if isinstance(objects, list):
            if len(objects) > MAX_OBJECTS:
                raise LayoutError(f"{len(objects)} objects; the studio opens layouts of at most {MAX_OBJECTS}", name)
            for i, obj in enumerate(objects):
                if isinstance(obj, dict) and "mask" in obj:
                    raise LayoutError(
                        "mask files cannot be opened from the page (the server reads no files for "
                        "it); save the layout with masks as rle, bbox or polygon, e.g. with "
                        "Layout.save into another folder",
                        name,
                        i,
                    )
        size = data.get("size")
        if isinstance(size, list) and any(isinstance(s, int) and s > MAX_UPLOAD_SIDE for s in size):
            raise LayoutError(f"size {size} is larger than the studio opens ({MAX_UPLOAD_SIDE} a side)", name)
    layout = Layout.from_dict(data, name, composer.categories)
    return composer.scene(layout)


# ----------------------------------------------------------------------------- state


def state(sid: str, session) -> dict:
    """What the page shows: the scene (each step as a PNG data URL, each object's mask as
    COCO uncompressed RLE counts, column-major from a run of zeros) and whether undo/redo apply."""
    scene = session.scene
    steps = [_data_url(scene.to_pil(t)) for t in range(len(scene) + 1)]
    objects = []
    for obj in scene.objects:
        ys, xs = np.nonzero(obj.mask)
        objects.append(
            {
                "category": obj.category,
                "seed": obj.seed,
                "counts": mask_runs(obj.mask),
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            }
        )
    composer = scene.composer
    return {
        "session": sid,
        "categories": list(composer.categories),
        "resolution": composer.resolution,
        "background_seed": scene.background_seed,
        "objects": objects,
        "steps": steps,
        "image": steps[-1],
        "undo": session.can_undo,
        "redo": session.can_redo,
    }


def mask_runs(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts of a bool mask: column-major run lengths, starting with a run of zeros."""
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(image)).decode("ascii")


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _written(write) -> bytes:
    """The bytes ``write(path)`` puts in a file (the same writers as the Python API's)."""
    with tempfile.TemporaryDirectory(prefix="scenecomp-studio-") as folder:
        path = Path(folder) / "file"
        write(path)
        return path.read_bytes()


# ----------------------------------------------------------------------------- the app


def create_app(composer: Composer, sessions: Sessions | None = None, *, hosts=None):
    """The Starlette app serving the page and the API for ``composer``. ``hosts``: the
    Host headers accepted (None: any); the CLI passes the loopback names when it binds
    to a loopback address, so another site cannot reach the page through DNS rebinding."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    sessions = Sessions() if sessions is None else sessions

    async def body(request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise StudioError(f"the request is {int(declared)} bytes; at most {MAX_BODY} are accepted", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise StudioError(f"the request is over {MAX_BODY} bytes, the limit", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(request, default=None):
        raw = await body(request)
        if not raw.strip():
            return default
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise StudioError(f"the request is not valid JSON ({str(e)[:200]})") from None

    def answer(sid, session, change=None):
        """Run ``change(session)`` under the tab's lock, then answer its state with the time taken."""
        start = time.perf_counter()
        with session.lock:
            if change is not None:
                change(session)
                sessions.changed()
            result = state(sid, session)
        result["ms"] = round(1000 * (time.perf_counter() - start), 1)
        return JSONResponse(result)

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def new_session(request):
        data = await json_body(request, {})
        seed = data.get("seed") if isinstance(data, dict) else None
        scene = await run_in_threadpool(composer.background, random_seed() if seed is None else seed)
        sid, session = sessions.create(scene)
        return await run_in_threadpool(answer, sid, session)

    async def get_session(request):
        sid = request.path_params["sid"]
        return await run_in_threadpool(answer, sid, sessions.get(sid))

    async def edit(request):
        sid = request.path_params["sid"]
        session = sessions.get(sid)
        data = await json_body(request)

        def change(session):
            op = data.get("op") if isinstance(data, dict) else None
            if op in ("undo", "redo"):
                try:
                    session.undo() if op == "undo" else session.redo()
                except ValueError as e:
                    raise StudioError(str(e)) from None
            else:
                session.push(apply_edit(session.scene, data))

        return await run_in_threadpool(answer, sid, session, change)

    async def upload(request):
        sid = request.path_params["sid"]
        session = sessions.get(sid)
        name = Path(request.query_params.get("name", "") or "layout.json").name[:100] or "layout.json"
        raw = await body(request)
        return await run_in_threadpool(
            answer, sid, session, lambda session: session.push(open_layout(composer, raw, name))
        )

    async def download(request):
        sid, what = request.path_params["sid"], request.path_params["file"]
        session = sessions.get(sid)
        scene = session.scene
        if what == "scene.png":
            data, kind = await run_in_threadpool(_png, scene.to_pil()), "image/png"
        elif what == "layout.json":
            data, kind = await run_in_threadpool(_written, scene.layout().save), "application/json"
        elif what == "scene.ora":
            data, kind = await run_in_threadpool(_written, scene.save_ora), "image/openraster"
        else:
            raise StudioError(f"no download named {quote(what)}; there are scene.png, layout.json and scene.ora", 404)
        return Response(data, media_type=kind, headers={"Content-Disposition": f'attachment; filename="{what}"'})

    async def known_error(request, exc):
        status = exc.status if isinstance(exc, StudioError) else 404 if isinstance(exc, SessionGone) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    async def unexpected_error(request, exc):  # Starlette re-raises it afterwards: uvicorn logs the traceback
        return JSONResponse(
            {
                "error": f"internal error ({type(exc).__name__}: {str(exc)[:200]}); the server "
                "keeps running, see its log"
            },
            status_code=500,
        )

    routes = [
        Route("/", index),
        Route("/api/session", new_session, methods=["POST"]),
        Route("/api/session/{sid}", get_session),
        Route("/api/session/{sid}/edit", edit, methods=["POST"]),
        Route("/api/session/{sid}/layout", upload, methods=["POST"]),
        Route("/api/session/{sid}/{file}", download),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    middleware = [] if hosts is None else [Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))]
    handlers = {
        StudioError: known_error,
        SessionGone: known_error,
        CompositionError: known_error,
        LayoutError: known_error,
        Exception: unexpected_error,
    }
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)


# ----------------------------------------------------------------------------- command line


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0: any free port)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="scenecomp-studio",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="composer.safetensors bundle or a run folder holding one (default: the model shipped with scenecomp)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; the page has no login)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    args = parser.parse_args(argv)
    try:
        composer = Composer.from_checkpoint(args.checkpoint) if args.checkpoint else Composer.pretrained()
    except (BundleError, FileNotFoundError) as e:
        print(f"scenecomp-studio: {e}", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)
    except (OSError, OverflowError) as e:
        print(
            f"scenecomp-studio: cannot listen on {args.host} port {args.port} ({e}); "
            "choose another with --port or --host",
            file=sys.stderr,
        )
        return 2
    import uvicorn

    loopback = _is_loopback(args.host)
    app = create_app(composer, hosts=LOOPBACK_HOSTS if loopback else None)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"scenecomp-studio: {composer.categories and ', '.join(composer.categories)} at "
        f"{composer.resolution}x{composer.resolution}; open http://{shown}:{port}/ (Ctrl+C stops)",
        flush=True,
    )
    if not loopback:
        print(
            f"scenecomp-studio: warning: listening on {args.host}, reachable from other machines; "
            "the page has no login",
            file=sys.stderr,
            flush=True,
        )
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
