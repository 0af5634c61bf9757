"""Bad input where it enters the served app: its HTTP API, gradio's layer in front of the handlers included
(everything on the tiny toy checkpoint, the app launched in process on 127.0.0.1). Handler-level bad inputs are in
``test_app.py``. See docs/reliability.md for the commands and the figures of a run."""
from __future__ import annotations

import re

import httpx
import pytest

from app import handlers

from .conftest import User

pytestmark = pytest.mark.usefixtures("llara_cache")

CHOICE_XFAIL = ("gradio's own choice check answers before the handler and lists every catalog label (about 40 KB on "
                "MovieLens); fix: allow_custom_value=True on the history/candidates/found/attr-target dropdowns in "
                "app/__init__.py, so the handlers' one-line messages apply over HTTP too")


def still_serving(client, user: User) -> None:
    out = client.predict(user.h, user.c, "rank", "none", 0, api_name="/predict")
    assert "Predicted in" in out[6]


def http_error(client, args, api_name: str) -> str:
    with pytest.raises(Exception) as info:  # gradio_client raises AppError carrying the server's message
        client.predict(*args, api_name=api_name)
    return str(info.value)


# ---- 1. bad input over HTTP ---------------------------------------------------------------------------------------
# layer: "handler" = our handlers answer (must hold now); "gradio" = gradio's own component check answers, with a
# message that is already specific; "choice" = gradio's dropdown choice check answers first (see CHOICE_XFAIL).
# A seed of the wrong JSON type ("abc", true, [1]) reaches the handler (app.seed_input), not gradio's generic error.

OK = ("rank", "none", 0)
BAD_HTTP = [
    # /predict: (history, candidates, decode, ablation, seed); the session's request state is not an API input
    ("predict", "empty history", lambda u: ([], u.c, *OK), r"^Pick at least one artist listened to\.$", "handler", None),
    ("predict", "null history", lambda u: (None, u.c, *OK), r"^Pick at least one artist listened to\.$", "handler", None),
    ("predict", "201 picks", lambda u: ([u.h[0]] * 201, u.c, *OK), r"Too many artists listened to \(201\); pick at most 200", "handler", None),
    ("predict", "empty candidates", lambda u: (u.h, [], *OK), r"candidate set is empty", "handler", None),
    ("predict", "one candidate", lambda u: (u.h, u.c[:1], *OK), r"Give at least 2 candidates to choose from \(got 1\)", "handler", None),
    ("predict", "25 candidates", lambda u: (u.h, u.pool[:25], *OK), r"At most 20 candidates .*\(got 25\)", "handler", None),
    ("predict", "duplicate candidates", lambda u: (u.h, [u.c[0], *u.c[:19]], *OK), r"same artist twice", "handler", None),
    ("predict", "watched candidate", lambda u: (u.h, [u.h[0], *u.c[1:]], *OK), r"both watched and a candidate", "handler", None),
    ("predict", "seed 2**40", lambda u: (u.h, u.c, "rank", "none", 2**40), r"seed must be a whole number from 0 to 4,294,967,295", "handler", None),
    ("predict", "seed 1e308", lambda u: (u.h, u.c, "rank", "none", 1e308), r"seed must be a whole number from 0 to 4,294,967,295", "handler", None),
    ("predict", "seed null", lambda u: (u.h, u.c, "rank", "none", None), r"seed must be a whole number", "handler", None),
    ("predict", "seed -1", lambda u: (u.h, u.c, "rank", "none", -1), r"^Value -1 is less than minimum value 0\.$", "gradio", None),
    ("predict", "decode beam", lambda u: (u.h, u.c, "beam", "none", 0), r"'beam' .*not in the list of choices: \['head', 'rank'", "gradio", None),
    ("predict", "decode 3", lambda u: (u.h, u.c, 3, "none", 0), r"Value: 3 .*not in the list of choices: \['head', 'rank'", "gradio", None),
    ("predict", "ablation all", lambda u: (u.h, u.c, "rank", "all", 0), r"'all' .*not in the list of choices: \['none'", "gradio", None),
    ("predict", "unknown title", lambda u: (["No Such Artist"], u.c, *OK), r"^Not in the catalog: 'No Such Artist'\.", "choice", "history"),
    ("predict", "10000-char title", lambda u: (["x" * 10_000], u.c, *OK), r"^Not in the catalog: 'x{80}\.\.\.'", "choice", "history"),
    ("predict", "odd unicode", lambda u: (["\x00\u202e\u0301 \U0001F600 \ufeff"], u.c, *OK), r"^Not in the catalog: ", "choice", "history"),
    ("predict", "unknown candidate", lambda u: (u.h, [*u.c[:19], "Nope"], *OK), r"^Not in the catalog: 'Nope'\. Pick candidates", "choice", "candidates"),
    ("predict", "ints as history", lambda u: ([1, 2], u.c, *OK), r"must be a list of artist names", "choice", "history"),
    ("predict", "string as history", lambda u: ("abc", u.c, *OK), r"^Not in the catalog: 'abc'", "choice", "history"),
    ("predict", "object as history", lambda u: ({"a": 1}, u.c, *OK), r"must be a list of artist names", "choice", "history"),
    ("predict", "seed 'abc'", lambda u: (u.h, u.c, "rank", "none", "abc"), r"^The seed must be a whole number, got 'abc'\.$", "handler", None),
    ("predict", "seed true", lambda u: (u.h, u.c, "rank", "none", True), r"^The seed must be a whole number, got true\.$", "handler", None),
    ("predict", "seed [1]", lambda u: (u.h, u.c, "rank", "none", [1]), r"^The seed must be a whole number, got '\[1\]'\.$", "handler", None),
    # /attribute: (history, candidates, target, method, ablation, seed, decode)
    ("attribute", "empty history", lambda u: ([], u.c, handlers.TOP_CHOICE, "grad_x_input", "none", 0, "rank"), r"^Pick at least one artist listened to\.$", "handler", None),
    ("attribute", "method shap", lambda u: (u.h, u.c, handlers.TOP_CHOICE, "shap", "none", 0, "rank"), r"'shap' .*not in the list of choices", "gradio", None),
    ("attribute", "target not among candidates", lambda u: (u.h, u.c[:5], u.c[10], "grad_x_input", "none", 0, "rank"), r"is not among the candidates", "choice", "attr-target"),
    ("attribute", "seed 2**40", lambda u: (u.h, u.c, handlers.TOP_CHOICE, "grad_x_input", "shuffle", 2**40, "rank"), r"from 0 to 4,294,967,295", "handler", None),
    # /search: (query, history)
    ("search", "empty query", lambda u: ("", u.h), r"^Type an artist's name first", "handler", None),
    ("search", "blank query", lambda u: ("   \n\t", u.h), r"^Type an artist's name first", "handler", None),
    ("search", "null query", lambda u: (None, u.h), r"^Type an artist's name first", "handler", None),
    ("search", "10000-char query", lambda u: ("x" * 10_000, u.h), r"^The description is 10,000 characters; keep it under 500\.$", "handler", None),
    ("search", "unknown history", lambda u: ("space", ["No Such Artist"]), r"^Not in the catalog: 'No Such Artist'", "choice", "history"),
    # /load_test_user: (user id, seed)
    ("load_test_user", "letters", lambda u: ("abc", 0), r"^The user id must be a number, got 'abc'\.$", "handler", None),
    ("load_test_user", "10000 digits", lambda u: ("1" * 10_000, 0), r"at most 12 digits, got 10,000 characters", "handler", None),
    ("load_test_user", "not a test user", lambda u: ("999999", 0), r"User 999999 is not a test user", "handler", None),
    ("load_test_user", "NUL byte", lambda u: ("\x00", 0), r"user id must be a number", "handler", None),
    ("load_test_user", "seed -1", lambda u: ("", -1), r"less than minimum value 0", "gradio", None),
    # /draw_candidates: (history, seed, candidate set)
    ("draw_candidates", "empty history", lambda u: ([], 0, "random"), r"^Pick at least one artist listened to\.$", "handler", None),
    ("draw_candidates", "seed 2**40", lambda u: (u.h, 2**40, "random"), r"from 0 to 4,294,967,295", "handler", None),
    ("draw_candidates", "unknown set", lambda u: (u.h, 0, "easy"), r"'easy' .*not in the list of choices", "gradio", None),
    # /add_found: (history, found)
    ("add_found", "ints as matches", lambda u: (u.h, [1, 2]), r"must be a list of artist names", "choice", "found"),
]


@pytest.mark.parametrize("endpoint, name, make_args, expected, layer, elem_id", BAD_HTTP,
                         ids=[f"{e}:{n}" for e, n, *_ in BAD_HTTP])
def test_bad_input_over_http(served, client, user, endpoint, name, make_args, expected, layer, elem_id):
    args = make_args(user)
    if layer == "accepted":
        assert client.predict(*args, api_name=f"/{endpoint}")
        return still_serving(client, user)
    message = http_error(client, args, f"/{endpoint}")
    still_serving(client, user)  # an error never takes the server down
    if layer == "choice" and not served["custom"].get(elem_id):
        assert "is not in the list of choices" in message  # rejected, but by gradio, naming the whole catalog
        pytest.xfail(CHOICE_XFAIL)
    assert re.search(expected, message), message
    assert len(message) < 400, f"{len(message)}-character message"  # one sentence, not an echo of the input


def test_valid_edge_inputs_over_http_say_what_happened(client, user, studio):
    one = client.predict(user.h[:1], user.c, "head", "none", 0, api_name="/predict")
    assert one[0].startswith("### ") and "repeated" not in one[6] and "most recent" not in one[6]
    dup = client.predict([*user.h[:3], *user.h[:3]], user.c, "rank", "none", 0, api_name="/predict")
    assert "3 repeated pick(s) counted once" in dup[6]
    long = [label for label in user.pool if label not in user.c][:12]
    many = client.predict(long, user.c, "rank", "none", 0, api_name="/predict")
    assert "Only the 10 most recent of the 12 picked artists are used" in many[6]  # the toy catalog holds artists


def test_search_then_add_in_one_session(client, user):
    """The matches become the choices of the matches dropdown, so adding them passes gradio's check."""
    found = client.predict("Mars", user.h, api_name="/search")
    if isinstance(found, dict):  # a dropdown update (new choices + value) reaches API clients as its dict
        assert found["choices"] == [[label, label] for label in found["value"]]
        found = found["value"]
    assert isinstance(found, list) and len(found) == 8 and not set(found) & set(user.h)
    added = client.predict(user.h, found[:2], api_name="/add_found")
    assert added == [*user.h, *found[:2]]
    with pytest.raises(Exception, match=r"Too many artists listened to \(201\)"):
        client.predict([user.h[0]] * 200, found[:1], api_name="/add_found")


def _raw_call(url: str, endpoint: str, body: bytes) -> tuple[int, str]:
    """POST a raw body to gradio's REST API; (status, text of the result stream or of the refusal)."""
    base = url.rstrip("/") + "/gradio_api/call/" + endpoint
    with httpx.Client(timeout=60) as http:
        posted = http.post(base, content=body, headers={"content-type": "application/json"})
        if posted.status_code != 200:
            return posted.status_code, posted.text
        return 200, http.get(f"{base}/{posted.json()['event_id']}").text


def test_raw_http_bodies(served, client, user):
    url = served["url"]
    status, text = _raw_call(url, "predict", b'{"data": [["\xff\xfe"], [], "rank", "none", 0]}')
    assert status in (400, 422), text  # not UTF-8: refused before any handler runs
    status, text = _raw_call(url, "predict", b"not json")
    assert status == 422 and "JSON decode error" in text
    status, text = _raw_call(url, "predict", b'{"data": 5}')
    assert status == 422 and "valid list" in text
    status, text = _raw_call(url, "predict", b'{"data": [["Alpha"]]}')  # too few inputs
    assert status == 200 and "event: error" in text
    # JSON may carry a lone surrogate ("\udcff"), which no UTF-8 string can: a clear message, not a tokenizer crash
    status, text = _raw_call(url, "search", b'{"data": ["\\udcff heist", []]}')
    assert status == 200 and "event: error" in text and "not valid Unicode text" in text, text
    status, text = _raw_call(url, "load_test_user", b'{"data": ["\\udcff", 0]}')
    assert "user id must be a number" in text, text
    still_serving(client, user)


def test_a_user_mistake_logs_one_line_not_a_traceback(client, user, capfd):
    capfd.readouterr()
    http_error(client, ([], user.c, *OK), "/predict")
    still_serving(client, user)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    assert err.count("refused a request: Pick at least one artist listened to.") == 1, err[-2000:]
