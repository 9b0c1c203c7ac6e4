"""The studio's server over HTTP (Starlette's TestClient, in-process): edits, undo, downloads,
bad input, and sessions that stay separate, bounded and expire. The page itself: test_studio_browser.py."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import make_tiny_nets
from scenecomp import Composer, Layout
from scenecomp.studio import app as studio
from scenecomp.studio.sessions import Sessions
from test_ora import restack

R = 16
CATEGORIES = ["tree", "house", "sun"]


@pytest.fixture(scope="module")
def composer():
    return Composer(*make_tiny_nets(), CATEGORIES)


@pytest.fixture
def client(composer):
    with TestClient(studio.create_app(composer, hosts=studio.LOOPBACK_HOSTS), base_url="http://127.0.0.1") as c:
        yield c


def pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def box(x, y, w, h) -> np.ndarray:
    m = np.zeros((R, R), bool)
    m[y : y + h, x : x + w] = True
    return m


def runs_mask(counts) -> np.ndarray:
    flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)
    return flat.reshape(R, R, order="F")


class Tab:
    """One browser tab's view of the API."""

    def __init__(self, client, seed=3):
        self.client = client
        self.state = self.ok(client.post("/api/session", json={"seed": seed}))
        self.sid = self.state["session"]

    @staticmethod
    def ok(response):
        assert response.status_code == 200, response.text
        return response.json()

    def edit(self, **body):
        self.state = self.ok(self.client.post(f"/api/session/{self.sid}/edit", json=body))
        return self.state

    def error(self, body=None, path="edit", status=400, **kw):
        response = (
            self.client.post(f"/api/session/{self.sid}/{path}", json=body, **kw)
            if body is not None
            else self.client.post(f"/api/session/{self.sid}/{path}", **kw)
        )
        assert response.status_code == status, response.text
        return response.json()["error"]

    @property
    def image(self):
        return pixels(self.state["image"])


def test_edits_repaint_only_what_they_change_and_undo_restores_exactly(client):
    tab = Tab(client)
    background = tab.image
    assert tab.state["background_seed"] == 3 and tab.state["objects"] == [] and not tab.state["undo"]

    rle = {"size": [R, R], "counts": [int(c) for c in studio.mask_runs(box(3, 4, 6, 5))]}
    tab.edit(op="add", category="house", mask={"rle": rle}, seed=11)
    house = tab.image
    obj = tab.state["objects"][0]
    assert (obj["category"], obj["seed"], obj["bbox"]) == ("house", 11, [3, 4, 6, 5])
    assert np.array_equal(runs_mask(obj["counts"]), box(3, 4, 6, 5))
    inside = box(3, 4, 6, 5)
    assert np.array_equal(house[~inside], background[~inside]) and not np.array_equal(house[inside], background[inside])

    tab.edit(op="add", category="sun", mask={"bbox": [9, 1, 5, 5]}, seed=12)
    two = tab.image
    tab.edit(op="reroll", index=0)  # a random new seed: only the house and what lies above it may change
    assert tab.state["objects"][0]["seed"] != 11
    changed = (tab.image != two).any(-1)
    assert changed.any() and not changed[~(inside | box(9, 1, 5, 5))].any()

    tab.edit(op="undo")
    assert np.array_equal(tab.image, two) and tab.state["redo"]
    tab.edit(op="redo")
    assert not np.array_equal(tab.image, two) and not tab.state["redo"]
    tab.edit(op="undo")

    tab.edit(op="move", index=0, dx=2, dy=-1)
    assert tab.state["objects"][0]["bbox"] == [5, 3, 6, 5]
    tab.edit(op="move", index=0, scale=0.5)
    assert tab.state["objects"][0]["bbox"][2:] == [3, 3]
    tab.edit(op="category", index=1, category="tree")
    assert [o["category"] for o in tab.state["objects"]] == ["house", "tree"]
    tab.edit(op="reorder", index=1, to=0)
    assert [o["category"] for o in tab.state["objects"]] == ["tree", "house"]
    tab.edit(op="remove", index=0)
    assert [o["category"] for o in tab.state["objects"]] == ["house"]
    tab.edit(op="background", seed=8)
    assert tab.state["background_seed"] == 8 and tab.state["objects"][0]["seed"] == 11 and len(tab.state["steps"]) == 2
    tab.edit(op="clear")
    assert tab.state["objects"] == [] and tab.state["background_seed"] == 8
    for _ in range(8):  # clear, background, remove, reorder, category, scale, move, the sun (the re-roll was undone)
        tab.edit(op="undo")
    assert np.array_equal(tab.image, house)


def test_downloads_reproduce_the_page(client, composer, tmp_path):
    tab = Tab(client, seed=5)
    tab.edit(op="add", category="tree", mask={"polygon": [[2, 15], [5, 3], [8, 15]]})
    tab.edit(op="add", category="house", mask={"bbox": [6, 7, 8, 6]})
    png = client.get(f"/api/session/{tab.sid}/scene.png")
    assert png.status_code == 200 and 'filename="scene.png"' in png.headers["content-disposition"]
    image = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert np.array_equal(image, tab.image)

    layout_file = tmp_path / "layout.json"
    layout_file.write_bytes(client.get(f"/api/session/{tab.sid}/layout.json").content)
    rendered = composer.render(Layout.load(layout_file))
    assert np.array_equal(((rendered.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy(), image)

    ora = tmp_path / "scene.ora"
    ora.write_bytes(client.get(f"/api/session/{tab.sid}/scene.ora").content)
    stacked, _, _ = restack(ora)
    assert np.array_equal(stacked[..., :3], image)

    # the layout opens again, as it was, in another tab (undo goes back to that tab's old scene)
    other = Tab(client, seed=0)
    other.state = Tab.ok(
        client.post(f"/api/session/{other.sid}/layout?name=layout.json", content=layout_file.read_bytes())
    )
    assert np.array_equal(other.image, image) and other.state["undo"]
    assert client.get(f"/api/session/{tab.sid}/nothing.txt").status_code == 404


HOSTILE = [
    (
        {"op": "add", "category": "dragon", "mask": {"bbox": [1, 1, 3, 3]}},
        r"unknown category 'dragon'.*known categories: tree, house, sun",
    ),
    ({"op": "add", "category": "tree", "mask": {"rle": {"size": [R, R], "counts": [R * R]}}}, r"mask is empty"),
    ({"op": "add", "category": "tree", "mask": {"bbox": [40, 40, 3, 3]}}, r"mask is empty"),
    ({"op": "add", "category": "tree", "mask": {"mask": "/etc/passwd"}}, r"mask must be one shape"),
    (
        {"op": "add", "category": "tree", "mask": {"rle": {"size": [R, R], "counts": [5, 3]}}},
        r"rle counts cover 8 pixels, but its size \[16, 16\] has 256",
    ),
    (
        {"op": "add", "category": "tree", "mask": {"polygon": [[0, 0]] * 20_000}},
        r"polygon has 20000 points; at most 10000 are accepted",
    ),
    ({"op": "add", "category": "tree"}, r"edit 'add' needs 'mask'"),
    ({"op": "reroll", "index": 7}, r"object index 7 out of range: the scene has no objects"),
    ({"op": "reroll", "index": "0"}, r"object index must be an integer"),
    ({"op": "background", "seed": -1}, r"background seed must be an integer in \[0, 2\*\*32\)"),
    ({"op": "background", "seed": 2**40}, r"background seed must be an integer in \[0, 2\*\*32\)"),
    ({"op": "undo"}, r"nothing to undo"),
    ({"op": "fly"}, r"unknown edit op 'fly'; known: background, clear, add"),
    ([1, 2], r"an edit must be a JSON object"),
]


@pytest.mark.parametrize("body,message", HOSTILE, ids=[m.split("'")[0][:30] for _, m in HOSTILE])
def test_bad_edits_get_a_clear_message_and_change_nothing(client, body, message):
    tab = Tab(client)
    before = tab.state
    assert re.search(message, tab.error(body)), message
    assert Tab.ok(client.get(f"/api/session/{tab.sid}")) | {"ms": 0} == before | {"ms": 0}


def test_bad_uploads_and_requests_get_a_clear_message_and_the_server_keeps_running(client, monkeypatch):
    tab = Tab(client)

    def upload(content, name="scene.json", status=400):
        return tab.error(path=f"layout?name={name}", content=content, status=status)

    assert (
        upload(b'{"size": [16, 16], "objects": [}') == "scene.json: malformed JSON at line 1, column 32: "
        "Expecting value"
    )
    assert upload(b"[" * 100_000 + b"]" * 100_000).startswith("scene.json: JSON nested too deeply")
    assert upload(b"\xff\xfe\x00garbage").startswith("scene.json: ")
    assert re.match(
        r"s\.json: object 1: unknown category 'cat'.*known categories: tree, house, sun",
        upload(
            json.dumps(
                {
                    "size": [16, 16],
                    "objects": [{"category": "tree", "bbox": [1, 1, 4, 4]}, {"category": "cat", "bbox": [1, 1, 4, 4]}],
                }
            ),
            name="../../s.json",
        ),
    )
    assert re.match(
        r"a\.json: object 0: mask files cannot be opened from the page",
        upload(json.dumps({"size": [16, 16], "objects": [{"category": "tree", "mask": "/etc/passwd"}]}), name="a.json"),
    )
    assert "larger than the studio opens" in upload(json.dumps({"size": [8192, 8192], "objects": []}))
    assert re.match(
        r"layout\.json: object 0: bbox is empty after rasterisation",
        upload(json.dumps({"size": [16, 16], "objects": [{"category": "tree", "bbox": [40, 1, 4, 4]}]}), name=""),
    )

    huge = b" " * (studio.MAX_BODY + 1)
    assert "at most" in upload(huge, status=413)
    assert "over" in upload(iter([b" " * 1_000_000] * 5), status=413)  # chunked: no Content-Length to trust
    assert "not valid JSON" in tab.error(path="edit", content=b"{op: add}")

    monkeypatch.setattr(studio, "MAX_OBJECTS", 1)
    tab.edit(op="add", category="sun", mask={"bbox": [1, 1, 3, 3]})
    assert "the studio's limit" in tab.error({"op": "add", "category": "sun", "mask": {"bbox": [5, 5, 3, 3]}})

    gone = client.post("/api/session/not-a-session/edit", json={"op": "undo"})
    assert gone.status_code == 404 and "scene is gone" in gone.json()["error"]
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
    page = client.get("/")
    assert page.status_code == 200 and "/static/studio.js" in page.text
    # nothing on the page is fetched from elsewhere: it works offline
    for asset in ("/", "/static/studio.js", "/static/studio.css"):
        assert not re.search(
            r"(src|href)=[\"']?(https?:)?//|url\(\s*[\"']?(https?:)?//|import\s", client.get(asset).text
        )
    tab.edit(op="undo")  # still serving
    assert tab.state["objects"] == []


def test_tabs_keep_their_own_scenes_within_bounds_and_old_ones_expire(composer):
    now = [0.0]
    sessions = Sessions(max_sessions=3, ttl=60, clock=lambda: now[0])
    with TestClient(studio.create_app(composer, sessions)) as client:
        a, b = Tab(client, seed=1), Tab(client, seed=2)
        a.edit(op="add", category="tree", mask={"bbox": [1, 1, 5, 5]})
        assert b.state["objects"] == [] and Tab.ok(client.get(f"/api/session/{b.sid}"))["objects"] == []
        now[0] = 30
        c, _d = Tab(client), Tab(client)  # past 3 sessions: the least recently used (a) goes
        assert len(sessions) == 3
        assert "scene is gone" in a.error({"op": "undo"}, status=404)
        now[0] = 80  # b was last used at 0: expired; c and d (at 30) still live
        assert "scene is gone" in b.error({"op": "undo"}, status=404)
        c.edit(op="background", seed=4)

    # memory: a session forgets its oldest scenes past its budget, never the current one
    one = composer.background(0)
    per_scene = sum(c.element_size() * c.nelement() for c in one._canvases)
    sessions = Sessions(session_bytes=3 * per_scene, total_bytes=10**9)
    sid, session = sessions.create(one)
    for seed in range(1, 8):
        session.push(session.scene.with_background(seed))
    assert session.scene.background_seed == 7 and len(session.history) == 3 and session.nbytes <= session.max_bytes
    shared = session.scene.add("tree", box(1, 1, 4, 4))
    session.push(shared)
    # the added object's canvas and mask push the oldest scene out; the background canvas it shares counts once
    assert session.history[-2]._canvases[0] is shared._canvases[0] and len(session.history) == 2
    assert session.nbytes == 2 * per_scene + R * R
    # past the total budget the least recently used sessions go, the one in use stays
    small = Sessions(total_bytes=2 * session.nbytes)
    ids = [small.create(composer.background(s))[0] for s in range(5)]
    assert len(small) < 5 and small.get(ids[-1])


def test_studio_command_line_errors_are_clear(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "scenecomp.studio.app", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in (
                ["--help"],
                ["--checkpoint", str(tmp_path / "none.pt")],
                ["--port", str(busy.getsockname()[1])],
            )
        ]
        (shown, _), (_, missing), (_, taken) = [p.communicate(timeout=600) for p in runs]  # started together
    assert [p.returncode for p in runs] == [0, 2, 2]
    assert "scenecomp-studio --checkpoint" in shown and "127.0.0.1" in shown
    assert "none.pt: no such file" in missing
    assert "cannot listen on 127.0.0.1 port" in taken and "--port" in taken
    assert "Traceback" not in missing + taken
