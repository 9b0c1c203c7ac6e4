"""Round trip of a studio edit over HTTP against a full re-render, measured in one run.

    python tools/bench_studio.py                          # the shipped model, a 6-object scene
    python tools/bench_studio.py --runs 31 --threads 1
    python tools/bench_studio.py --checkpoint runs/shapes64/composer.safetensors
    python tools/bench_studio.py --objects 2 --runs 3     # smoke test

Serves the studio app (`scenecomp.studio.app.create_app`, the same app `scenecomp-studio`
serves) with uvicorn on 127.0.0.1 in this process, composes a scene of T objects through its
API, then times edits as the page sends them: a POST over one keep-alive connection, the
answer (the new state: every step as a PNG, every mask) read and parsed. Each figure is a
median over ``--runs``. The full re-render is the same scene painted from scratch, both
in-process (`Composer.scene` of its layout: the background and all T objects) and over HTTP
(a new background seed, which repaints everything); each edit is printed with its ratio to
both. Its GFLOP/s (``torch.utils.flop_counter``) is printed as fractions of the bf16 and fp32
2048² matmul rates measured in the same run (``tools/peak.py``). Goal: an edit under 100 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time

import torch
from bench_edit import median_ms
from peak import Peak
from torch.utils.flop_counter import FlopCounterMode

from scenecomp import Composer
from scenecomp.studio.app import bind, create_app

BOXES = [[2, 30, 20, 30], [30, 20, 25, 30], [40, 2, 15, 15], [5, 5, 30, 15], [20, 40, 20, 20], [45, 40, 15, 20]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a composer.safetensors bundle (default: the shipped model)")
    parser.add_argument("--objects", "-T", type=int, default=6, help="objects in the scene (default 6)")
    parser.add_argument("--runs", type=int, default=21, help="timed runs per figure; the median is reported")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = Peak.measure("cpu")
    print(peak)
    composer = Composer.from_checkpoint(args.checkpoint) if args.checkpoint else Composer.pretrained()

    def sync():
        return None  # CPU: every call has finished when it returns

    import uvicorn

    sock = bind("127.0.0.1", 0)
    # keep-alive outlasts the in-process timings between requests
    server = uvicorn.Server(uvicorn.Config(create_app(composer), log_level="warning", timeout_keep_alive=600))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    connection = http.client.HTTPConnection("127.0.0.1", sock.getsockname()[1])

    def post(path: str, body: dict) -> dict:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        state = json.loads(response.read())
        if response.status != 200:
            raise SystemExit(f"bench_studio: {path} {body} answered {response.status}: {state}")
        return state

    try:
        R, T = composer.resolution, args.objects
        sid = post("/api/session", {"seed": 0})["session"]

        def edit(body):
            return post(f"/api/session/{sid}/edit", body)

        for i in range(T):
            x, y, w, h = BOXES[i % len(BOXES)]
            s = R / 64
            edit(
                {
                    "op": "add",
                    "category": composer.categories[i % len(composer.categories)],
                    "mask": {"bbox": [x * s, y * s, w * s, h * s]},
                    "seed": i,
                }
            )
        for r in range(3):  # warm-up
            answer = edit({"op": "reroll", "index": 0, "seed": 10**6 + r})
        scene = composer.scene(_layout(composer, sid, connection))

        t_full = median_ms(lambda r: composer.scene(scene.layout()), args.runs, sync)
        with FlopCounterMode(display=False) as counter:
            composer.scene(scene.layout())
        gflop = counter.get_total_flops() / 1e9
        t_full_http = median_ms(lambda r: edit({"op": "background", "seed": 1 + r}), args.runs, sync)
        edit({"op": "background", "seed": 0})
        rows = [
            (f"re-roll the last object (k={T - 1})", lambda r: edit({"op": "reroll", "index": T - 1, "seed": r})),
            ("re-roll the first object (k=0)", lambda r: edit({"op": "reroll", "index": 0, "seed": r})),
            ("move the last object by 1 px", lambda r: edit({"op": "move", "index": T - 1, "dx": 1 - 2 * (r % 2)})),
            ("undo (no painting)", lambda r: edit({"op": "undo" if r % 2 == 0 else "redo"})),
        ]
        print(
            f"scene: {T} objects at {R}x{R}, {composer.device} {str(composer.dtype).removeprefix('torch.')}, "
            f"{torch.get_num_threads()} threads, median of {args.runs} runs; each answer {len(json.dumps(answer)) / 1000:.0f} kB"
        )
        print(
            f"full re-render in process (background + {T} objects): {t_full:.2f} ms, {gflop:.3f} GFLOP, "
            f"{peak.describe(gflop / (t_full / 1000))}"
        )
        print(f"full re-render over HTTP (new background seed): {t_full_http:.2f} ms\n")
        print("edit over HTTP (round trip)       |     ms | / full in process | / full over HTTP")
        print("----------------------------------|--------|-------------------|-----------------")
        for name, fn in rows:
            t = median_ms(fn, args.runs, sync)
            print(f"{name:33s} | {t:6.2f} | {t / t_full:17.2f} | {t / t_full_http:15.2f}")
        print("\ngoal: an edit's round trip under 100 ms")
    finally:
        connection.close()
        server.should_exit = True
        thread.join(10)


def _layout(composer: Composer, sid: str, connection: http.client.HTTPConnection):
    """The session's scene as a `Layout`, through its layout.json download."""
    from scenecomp.layout import Layout, parse_json

    connection.request("GET", f"/api/session/{sid}/layout.json")
    return Layout.from_dict(parse_json(connection.getresponse().read()), categories=composer.categories)


if __name__ == "__main__":
    main()
