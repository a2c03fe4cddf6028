"""A short live check of a built Bento, used by `make demo`: serve it, send one request to each model, stop it.

    from serving.build import build_bento
    from serving.smoke import demo_requests
    demo_requests(build_bento(), spec_path="demo_out/data/spec.yaml")

The /churn_risk request is a real customer from the spec's data (one with texts, as of the newest label date);
without a spec it is made up from the churn model's own schema.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from features.columns import CUSTOMER_ID, EVENT_TYPE, SIGNUP_DATE, TEXT, TIMESTAMP

logger = logging.getLogger(__name__)

SENTIMENT_EXAMPLES = [
    "Support fixed my problem in five minutes, thank you!",
    "Third time this month the app lost my settings and nobody answers the phone.",
]


def _json_scalar(value: Any) -> Any:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def churn_request_from_tables(
    customers: pd.DataFrame,
    events: pd.DataFrame,
    customer_id: str,
    as_of: Any,
    value_columns: tuple[str, ...],
) -> dict[str, Any]:
    """A /churn_risk body for one customer of canonical tables: their profile and events before `as_of`."""
    row = customers.loc[customers[CUSTOMER_ID].astype(str) == customer_id].iloc[0]
    profile = {
        str(name): _json_scalar(value)
        for name, value in row.items()
        if name not in (CUSTOMER_ID, SIGNUP_DATE, "churned", "churn_date")
    }
    mine = events[
        (events[CUSTOMER_ID].astype(str) == customer_id) & (events[TIMESTAMP] < pd.Timestamp(as_of))
    ]
    body_events = []
    for record in mine.to_dict("records"):
        item: dict[str, Any] = {
            "timestamp": pd.Timestamp(record[TIMESTAMP]).isoformat(),
            "type": str(record[EVENT_TYPE]),
        }
        item.update({name: _json_scalar(record.get(name)) for name in value_columns})
        text = record.get(TEXT)
        if isinstance(text, str) and text.strip():
            item["text"] = text
        body_events.append(item)
    signup = row.get(SIGNUP_DATE)
    return {
        "customer": {
            "customer_id": customer_id,
            "signup_date": None if signup is None or pd.isna(signup) else pd.Timestamp(signup).isoformat(),
            **profile,
        },
        "events": body_events,
        "as_of": pd.Timestamp(as_of).isoformat(),
    }


def example_from_spec(spec_path: Path) -> dict[str, Any]:
    """A customer with texts from the spec's data, as of the newest label date (or today without one)."""
    from features.pipeline import load_data
    from features.spec import load_spec

    spec = load_spec(Path(spec_path))
    data = load_data(spec, with_text=True)
    dates = spec.labels.as_of_dates()
    as_of = pd.Timestamp(dates[-1] if dates else dt.date.today())
    events = data.events
    before = events[events[TIMESTAMP] < as_of]
    if TEXT in before.columns and before[TEXT].notna().any():
        texts = before.dropna(subset=[TEXT]).groupby(CUSTOMER_ID, observed=True).size()
        customer_id = str(texts.sort_values(ascending=False).index[0])
    else:
        customer_id = str(before[CUSTOMER_ID].iloc[0])
    values = tuple(spec.events.values) if spec.events else ()
    return churn_request_from_tables(data.customers, events, customer_id, as_of, values)


def example_from_schema(schema: Any) -> dict[str, Any]:
    """A made-up customer with one event of every type the model knows (null profile values)."""
    now = dt.datetime.now(dt.UTC)
    profile = {name: None for name in (*schema.profile_numeric, *schema.profile_categorical)}
    events = [
        {"timestamp": (now - dt.timedelta(days=3 * (i + 1))).isoformat(), "type": kind}
        | {name: 1.0 for name in schema.value_columns}
        for i, kind in enumerate(schema.event_types)
    ]
    events[0]["text"] = SENTIMENT_EXAMPLES[1]
    return {"customer": {"customer_id": "example", **profile}, "events": events}


def demo_requests(
    bento_tag: str | None = None,
    spec_path: Path | str | None = None,
    port: int | None = None,
    store_url: str | None = None,
    riskiest: Sequence[str] = (),
) -> dict[str, Any]:
    """Serve the Bento on 127.0.0.1 briefly, send one /churn_risk and one /sentiment request, print both
    answers, stop the server, and return them ({"churn_risk": ..., "sentiment": ...}).

    Args:
        bento_tag: the Bento to serve (default: the newest churnsense Bento).
        spec_path: a dataset spec whose data gives the /churn_risk customer (default: a made-up one).
        port: the port (default: a free one).
        store_url: an event store holding the spec's data: the same customer is then also asked for by id.
        riskiest: high-risk customers of that store, riskiest first: the first whose reasons quote a text is
            shown as a support agent would read it (`agent_view`, with the phrases that drove each text).
    """
    import bentoml
    import httpx
    from mlflow.models import Model

    from features.engine import FeatureSchema
    from serving.server import ServerProcess, latest_bento_tag

    tag = bento_tag or latest_bento_tag()
    if spec_path is not None:
        churn_body = example_from_spec(Path(spec_path))
    else:
        churn_model = next(m for m in bentoml.get(tag).info.all_models if m.tag.name == "churnsense-churn")
        folder = bentoml.models.get(churn_model.tag).path_of("mlflow_model")
        churn_body = example_from_schema(
            FeatureSchema.from_json(Model.load(folder).metadata["feature_schema"])
        )
    carried = {m.tag.name for m in bentoml.get(tag).info.all_models}
    sentiment_body = {"texts": SENTIMENT_EXAMPLES, "aspects": "churnsense-aspects" in carried}
    env = {"CHURNSENSE_STORE_URL": store_url} if store_url else None
    by_id = None
    with (
        ServerProcess(tag, port=port, env=env) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        print(f"serving {tag} at {server.url} (OpenAPI docs at {server.url}/)")
        churn = client.post("/churn_risk", json=churn_body)
        sentiment = client.post("/sentiment", json=sentiment_body)
        if store_url:
            ask = {"customer_id": churn_body["customer"]["customer_id"], "as_of": churn_body.get("as_of")}
            by_id = client.post("/churn_risk", json=ask)
        agent, shown = None, None
        if store_url and riskiest:
            shown = _quoting_texts(client, riskiest, churn_body.get("as_of"))
            agent = client.post(
                "/churn_risk", json={"customer_id": shown, "as_of": churn_body.get("as_of"), "phrases": True}
            )
        health = client.get("/healthz").status_code
    n_texts = sum("text" in e for e in churn_body["events"])
    print(
        f"\nPOST /churn_risk  customer {churn_body['customer']['customer_id']} with "
        f"{len(churn_body['events'])} events ({n_texts} with text), as_of {churn_body.get('as_of', 'now')}"
    )
    print(f"-> {churn.status_code} {json.dumps(_without_evidence(churn.json()), indent=2)}")
    print(
        "   (each reason also carries `evidence`: the events behind it; shown below for the riskiest customer)"
    )
    print(f"\nPOST /sentiment  {json.dumps(sentiment_body)}")
    print(f"-> {sentiment.status_code} {json.dumps(sentiment.json(), indent=2)}")
    if by_id is not None:
        same = by_id.status_code == 200 and by_id.json()["churn_risk"] == churn.json()["churn_risk"]
        print(f"\nPOST /churn_risk  {json.dumps(ask)}  (history from the event store)")
        print(f"-> {by_id.status_code} churn_risk {by_id.json().get('churn_risk')}: "
              f"{'the same' if same else 'NOT the same'} as with the full history")  # fmt: skip
    if agent is not None and agent.status_code == 200:
        print(
            f"\nPOST /churn_risk  {{'customer_id': {shown!r}, 'phrases': true}}: a high-risk customer whose "
            "reasons quote what they wrote, as an agent reads it"
        )
        print(agent_view(agent.json()))
    print(f"\n/healthz {health}; server stopped")
    answers = [("/churn_risk", churn), ("/sentiment", sentiment)]
    for name, response in answers + ([("/churn_risk by id", by_id)] if by_id is not None else []):
        if response.status_code != 200:
            from churnsense.errors import UserError

            raise UserError(f"{name} answered {response.status_code}: {response.text[:500]}")
    return {"churn_risk": churn.json(), "sentiment": sentiment.json()}


def _quoting_texts(client: Any, candidates: Sequence[str], as_of: Any) -> str:
    """The first of `candidates` whose reasons' evidence quotes a text (else the first)."""
    for customer_id in candidates:
        answer = client.post("/churn_risk", json={"customer_id": customer_id, "as_of": as_of})
        if answer.status_code == 200 and any(
            event.get("text")
            for reason in answer.json()["reasons"]
            if reason.get("evidence")
            for event in reason["evidence"]["events"]
        ):
            return customer_id
    return candidates[0]


def _without_evidence(answer: dict[str, Any]) -> dict[str, Any]:
    return answer | {"reasons": [{k: v for k, v in r.items() if k != "evidence"} for r in answer["reasons"]]}


def _quoted(text: str | None, phrase: dict[str, Any] | None = None, width: int = 90) -> str:
    """The text in quotes, the phrase that drove its sentiment between ** marks, cut to about `width`
    characters around that phrase."""
    if not text:
        return ""
    start, end = (phrase["start"], phrase["end"]) if phrase else (0, 0)
    if phrase:
        text = f"{text[:start]}**{text[start:end]}**{text[end:]}"
        end += 4
    if len(text) > width:
        first = max(0, min(start - (width - (end - start)) // 2, len(text) - width))
        text = (
            ("..." if first else "")
            + text[first : first + width]
            + ("..." if first + width < len(text) else "")
        )
    return f' "{text}"'


_EVENT_KEYS = ("timestamp", "type", "text", "sentiment", "phrase", "aspect")


def time_to_churn_text(times: dict[str, Any]) -> str:
    """'expected to leave in about 41 days; still a customer in 30/60/90 days: 71% / 52% / 38%'."""
    days = times.get("expected_days_to_churn")
    more = times.get("expected_days_more_than")
    when = (
        f"expected to leave in about {days:.0f} days"
        if days is not None
        else f"expected to stay more than {more:.0f} days"
        if more is not None
        else "time to churn unknown"
    )
    odds = [times.get(f"survival_{d}d") for d in (30, 60, 90)]
    if any(p is None for p in odds):
        return when
    return when + "; still a customer in 30/60/90 days: " + " / ".join(f"{p:.0%}" for p in odds)


def agent_view(answer: dict[str, Any], shown: int = 3) -> str:
    """A /churn_risk answer as a support agent reads it: risk and band, then each reason with the events
    behind it (newest first, texts quoted, the phrase that drove a text's sentiment between ** marks)."""
    lines = [
        f"customer {answer['customer_id']} as of {str(answer['as_of'])[:10]}: churn risk "
        f"{answer['churn_risk']:.0%} ({answer['risk_band']})"
    ]
    if answer.get("time_to_churn"):
        lines.append("  " + time_to_churn_text(answer["time_to_churn"]))
    for rank, reason in enumerate(answer["reasons"], 1):
        value = reason["value"]
        shown_value = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(
            f"  {rank}. {reason['feature']} = {shown_value} ({reason['contribution']:+.2f} log-odds towards churn)"
        )
        evidence = reason.get("evidence")
        if not evidence:
            lines.append("       (a profile value: no events behind it)")
            continue
        if not evidence["events"]:
            lines.append("       no such events")
            continue
        more = evidence["total"] - len(evidence["events"][:shown])
        for event in evidence["events"][:shown]:
            sentiment = event.get("sentiment")
            mood = f" (sentiment {sentiment:+.2f})" if sentiment is not None else ""
            mood += f" about {event['aspect']}" if event.get("aspect") else ""
            values = [f"{k} {v:g}" for k, v in event.items() if k not in _EVENT_KEYS and v is not None]
            mood += f" [{', '.join(values)}]" if values else ""
            lines.append(
                f"       {event['timestamp'][:16].replace('T', ' ')}  {event['type']}{mood}{_quoted(event.get('text'), event.get('phrase'))}"
            )
        if more > 0:
            lines.append(f"       ... and {more} more")
    return "\n".join(lines)
