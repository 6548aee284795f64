"""Order fraud from the basket: is a web-shop order fraud, given the set of items in it?

A task outside Loopline's families, written against the contract only (`loopline.contract`,
walked through in docs/own-task.md). One example is one order, which is several rows of
the data (one per item, in any number); the model is a permutation-invariant set network
(DeepSets: the same small MLP on every item, their sum or mean, a head), exported to ONNX
with a dynamic item axis.

The data contract: `order_id, line, price, quantity, category, label`, one row per item; the
label (`ok` or `fraud`) is the order's, repeated on each of its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from loopline.contract import (
    EVENT_TIME,
    Answer,
    BadInput,
    Dimension,
    Examples,
    FeatureOptions,
    FeatureSpec,
    Hyperparameters,
    LoadedModel,
    Params,
    Rule,
    Section,
    Serving,
    Task,
    evaluate_classifier,
    normalize,
    refusal,
    run_finite,
    run_onnx,
)

CLASSES = ("ok", "fraud")  # the model's outputs, in this order
ITEM_COLUMNS = ("price", "quantity", "category")  # what a client sends per item
# An ONNX input axis of length 1 at export is fixed to 1: pad every batch to 2 items or more.
MIN_ITEMS = 2


# ---------------------------------------------------------------------- typed configuration


class BasketSettings(Section):
    """The task's own section of params.yaml (`baskets:`)."""

    # The shop's item categories: an item of another one is quarantined (and refused when
    # served); each becomes one input of the model.
    categories: tuple[str, ...] = ("grocery", "apparel", "electronics", "gift_card")
    max_items: int = Field(50, gt=0)  # a larger order is refused (400): it is no web order


@dataclass(frozen=True)
class BasketOptions(FeatureOptions):
    """What the model's feature spec carries: the service reads these, never params."""

    categories: list[str] = field(default_factory=list)
    max_items: int = 50


@dataclass(frozen=True, kw_only=True)
class BasketHyperparameters(Hyperparameters):
    hidden_size: int  # width of the per-item MLP and of the pooled order
    dropout: float
    pooling: Literal["sum", "mean"]  # sum counts items, mean weighs their mix


def feature_columns(categories: list[str]) -> list[str]:
    return ["log_price", "log_quantity", *(f"is_{c}" for c in categories)]


# ---------------------------------------------------------------------- the model


class BasketNet(nn.Module):
    """DeepSets: `phi` on each item, a masked sum (or mean) over the order, `rho` on it.

    Input (orders, items, features + 1): each item's scaled features and, last, 1 for an
    item or 0 for padding. Output: class logits (`forward`), or probabilities (`predict`).
    """

    def __init__(self, n_features: int, hidden_size: int, dropout: float, pooling: str) -> None:
        super().__init__()
        self.phi = nn.Sequential(
            nn.Linear(n_features, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
        )
        # The pooled items and the log of their count (a sum alone cannot tell one item
        # from two items at half the value).
        self.rho = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size + 1, len(CLASSES)))
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        present = x[..., -1:]
        items = self.phi(x[..., :-1]) * present  # padding contributes nothing
        count = present.sum(dim=1)
        pooled = items.sum(dim=1)
        if self.pooling == "mean":
            pooled = pooled / count.clamp(min=1.0)
        return self.rho(torch.cat([pooled, torch.log1p(count)], dim=-1))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Summed over the batch: the training loop divides by the batch size itself.
        return nn.functional.cross_entropy(output, target, reduction="sum")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=-1)

    def exportable(self) -> tuple[nn.Module, dict[int, str], list[str]]:
        # What ONNX serves: probabilities, with the item axis (1) dynamic beside the batch.
        return _Probabilities(self), {1: "items"}, ["probabilities"]

    def layer_groups(self) -> list[tuple[str, list[nn.Module]]]:
        # Top (output side) first: a new label set replaces `rho` only.
        return [("rho", [self.rho]), ("phi", [self.phi])]


class _Probabilities(nn.Module):
    def __init__(self, model: BasketNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)


# ---------------------------------------------------------------------- orders as arrays


def order_inputs(rows: pd.DataFrame, spec: FeatureSpec) -> tuple[np.ndarray, list[str]]:
    """Model inputs (orders, items, features + 1) of item rows with features, one order per
    distinct `order_id` in sorted order, padded to the largest; and those order ids."""
    rows = rows.sort_values(["order_id", "line"], kind="stable")
    codes, orders = pd.factorize(rows["order_id"], sort=True)
    position = rows.groupby(codes).cumcount().to_numpy()
    width = max(MIN_ITEMS, int(position.max(initial=-1)) + 1)
    values = normalize(rows, spec)
    x = np.zeros((len(orders), width, values.shape[1] + 1), np.float32)
    x[codes, position, :-1] = values
    x[codes, position, -1] = 1.0
    return x, [str(o) for o in orders]


def order_labels(rows: pd.DataFrame, orders: list[str]) -> np.ndarray:
    """Class ids of `orders`: each order's label is its first row's."""
    first = rows.groupby("order_id")["label"].first()
    index = {label: i for i, label in enumerate(CLASSES)}
    return first.loc[orders].map(index).to_numpy(np.int64)


def order_totals(rows: pd.DataFrame) -> pd.Series:
    return (rows["price"] * rows["quantity"]).groupby(rows["order_id"]).sum().sort_index()


# ---------------------------------------------------------------------- serving


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    price: float = Field(description="Unit price.")
    quantity: float = Field(description="Units bought.")
    category: str


class Order(BaseModel):
    """One order: its id (echoed) and its items, in any order."""

    model_config = ConfigDict(extra="forbid")

    order_id: str | None = None
    items: list[Item] = Field(min_length=1)


class OrderAnswer(BaseModel):
    order_id: str | None = None
    label: str | None = Field(None, description=f"One of {list(CLASSES)}.")
    probabilities: dict[str, float] | None = None
    error: str | None = Field(None, description="Why this order was not answered.")


def orders_from_rows(rows: pd.DataFrame) -> list[Order]:
    """The orders raw item rows stand for, as a client sends them."""
    rows = rows.sort_values(["order_id", "line"], kind="stable")
    return [
        Order(order_id=str(order), items=group[list(ITEM_COLUMNS)].to_dict("records"))
        for order, group in rows.groupby("order_id", sort=False)
    ]


def item_rows(orders: list[Order]) -> pd.DataFrame:
    """One raw row per item; each order's `order_id` is its position (clients may send
    none, or the same twice), zero-padded so that sorting keeps their order."""
    return pd.DataFrame(
        [
            {"order_id": f"{n:09d}", "line": line, **item.model_dump()}
            for n, order in enumerate(orders)
            for line, item in enumerate(order.items, start=1)
        ]
    )


class BasketServing(Serving):
    """`POST /predict {"orders": [...]}` → one answer per order; `/stream`: an order a line."""

    Request = Order
    Response = OrderAnswer
    input_name = "orders"
    StreamLine = Order
    answers_are = "orders"

    def check(self, item: Order, model: LoadedModel) -> None:
        limit = model.spec.options.max_items
        if len(item.items) > limit:
            raise BadInput(f"an order holds at most {limit} items; this one {len(item.items)}")

    def predict(self, model: LoadedModel, items: list[Order]) -> list[Answer]:
        contract = self.contract(ITEM_COLUMNS)
        answers: list[Answer | None] = [None] * len(items)
        good = []
        for position, order in enumerate(items):
            broken = contract.check(pd.DataFrame([i.model_dump() for i in order.items]))
            if broken:
                row, rules = next(iter(broken.items()))
                named = {"order_id": order.order_id}
                answers[position] = refusal(rules, where=f"items[{row}]", named=named)
            else:
                good.append(position)
        if good:
            orders = [items[p] for p in good]
            rows = self.task.add_features(item_rows(orders), model.spec)
            x, _ = order_inputs(rows, model.spec)
            outputs = run_finite(lambda batch: run_onnx(model.session, batch), x)
            for n, position in enumerate(good):
                if outputs.bad_inputs[n] or outputs.bad_outputs[n]:
                    message = "a value of this order is out of any plausible range"
                    answers[position] = Answer(
                        {"order_id": orders[n].order_id, "error": message}, error=True
                    )
                else:
                    answers[position] = self._answer(orders[n], outputs.values[n])
        return answers

    def _answer(self, order: Order, output: np.ndarray) -> Answer:
        probabilities = {label: float(p) for label, p in zip(CLASSES, output, strict=True)}
        label = max(probabilities, key=probabilities.__getitem__)
        response = OrderAnswer(order_id=order.order_id, label=label, probabilities=probabilities)
        return Answer(
            response.model_dump(),
            key=order.order_id,
            inputs=order.model_dump(),
            output=[float(p) for p in output],
        )

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        options = model.spec.options
        return {"categories": options.categories, "items_at_most": options.max_items}

    def route_key(self, item: Order) -> str | None:
        return item.order_id  # a canary keeps each order on one side

    def requests(self, rows: pd.DataFrame, model: LoadedModel) -> list[Order]:
        return orders_from_rows(rows)

    def stream_lines(self, rows: pd.DataFrame) -> list[Order]:
        return orders_from_rows(rows)  # the default would make one line per row: an item


# ---------------------------------------------------------------------- the task


class BasketsTask(Task):
    name = "baskets"
    schema: ClassVar[dict[str, str]] = {
        "order_id": "string",
        "line": "float",
        "price": "float",
        "quantity": "float",
        "category": "string",
        "label": "string",
    }
    key_columns: ClassVar[list[str]] = ["order_id", "line"]
    target_column = "label"
    # Every row of an order in one set: its items are one example.
    split_kind = "grouped"
    group_column = "order_id"
    Settings = BasketSettings
    Options = BasketOptions
    Hyperparameters = BasketHyperparameters
    architecture = ("hidden_size",)  # the others do not shape the weights
    transferred_features = ("mean", "std")  # a copied model's weights expect its scaling
    Serving = BasketServing

    def default_space(self) -> dict[str, Dimension]:
        return {
            "hidden_size": Dimension(choices=[16, 32]),
            "dropout": Dimension(low=0.0, high=0.2),
            "pooling": Dimension(choices=["sum", "mean"]),
            "learning_rate": Dimension(low=3e-3, high=3e-2, log=True),
            "batch_size": Dimension(choices=[32]),
        }

    def rules(self, params: Params) -> list[Rule]:
        categories = tuple(self.settings(params).categories)
        return [
            Rule("order_id_given", "not_blank", column="order_id"),
            Rule("line_given", "not_null", column="line"),
            Rule("item_once", "unique", columns=("order_id", "line")),
            Rule("price_positive", "between", column="price", min=0.01, max=1e6),
            Rule("quantity_plausible", "between", column="quantity", min=1, max=1000),
            Rule("known_category", "in_set", column="category", values=categories, show_value=True),
            Rule("label_known", "in_set", column="label", values=CLASSES),
        ]

    # ------------------------------------------------------------------ features

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        settings = self.settings(params)
        categories = list(settings.categories)
        return FeatureSpec(
            task=self.name,
            feature_columns=feature_columns(categories),
            target_column=self.target_column,
            labels=list(CLASSES),
            options=BasketOptions(categories=categories, max_items=settings.max_items),
        )

    def add_features(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """Per item: log price, log quantity, its category one-hot (the service calls this
        too, with the served model's spec)."""
        price = pd.to_numeric(frame["price"], errors="coerce")
        quantity = pd.to_numeric(frame["quantity"], errors="coerce")
        columns = {"log_price": np.log1p(price), "log_quantity": np.log1p(quantity)}
        for category in spec.options.categories:
            columns[f"is_{category}"] = (frame["category"] == category).astype(np.float64)
        return frame.assign(**columns)

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        """Each feature's mean and spread on the training split's items only."""
        values = train_rows[spec.feature_columns].astype(np.float64)
        std = values.std(ddof=0).replace(0.0, 1.0)  # a constant input: scale by 1
        return replace(spec, mean=values.mean().to_dict(), std=std.to_dict())

    def examples(self, frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> Examples:
        rows = frame[frame["split"] == target_set]
        x, orders = order_inputs(rows, spec)
        keys = pd.DataFrame({"order_id": orders})
        return Examples(x, order_labels(rows, orders), keys)

    # ------------------------------------------------------------------ model

    def build_model(self, hparams: BasketHyperparameters, spec: FeatureSpec) -> BasketNet:
        return BasketNet(
            n_features=len(spec.feature_columns),
            hidden_size=hparams.hidden_size,
            dropout=hparams.dropout,
            pooling=hparams.pooling,
        )

    def probe_input(self, spec: FeatureSpec) -> np.ndarray:
        """Two empty orders: what a loaded model is checked on when no golden batch was
        published beside it (the model reads orders × items × features + 1)."""
        return np.zeros((2, MIN_ITEMS, len(spec.feature_columns) + 1), np.float32)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, frame, spec, model, params, champion=None):
        """The model, two baselines and the champion on the same test orders; accuracy
        decides. Baselines: the training split's class shares (the majority class), and
        the best threshold on an order's total (fraud is above it, or below it)."""
        test = self.examples(frame, spec, "test")
        with torch.no_grad():
            mine = model.predict(torch.from_numpy(test.x)).numpy()
        train = self.examples(frame, spec, "train")
        shares = np.bincount(train.y, minlength=len(CLASSES)) / len(train.y)
        rows = {s: frame[frame["split"] == s] for s in ("train", "test")}
        probabilities = {
            "model": mine,
            "majority_class_baseline": np.tile(shares, (len(test.y), 1)),
            "order_total_baseline": total_threshold(rows["train"], train.y, rows["test"]),
        }

        def champion_probabilities(session, own: FeatureSpec) -> np.ndarray:
            # The champion reads the test orders with its own spec (its scaling).
            return run_onnx(session, self.examples(frame, own, "test").x)

        return evaluate_classifier(
            test.y, probabilities, spec, champion, champion_probabilities, params
        )

    # ------------------------------------------------------------------ monitoring

    def logged_rows(self, records: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """The item rows of each logged order (its `inputs`), the order's id its position
        in the log, so that each record stays one order."""
        orders = [Order.model_validate(i) for i in records["inputs"] if isinstance(i, dict)]
        return item_rows(orders)

    def monitor_inputs(self, rows: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """What drifts in an order: its size, its total and its share of gift cards and
        electronics; one row per order (no event time: the log's time is used)."""
        value = rows["price"] * rows["quantity"]
        resold = rows["category"].isin(["gift_card", "electronics"]).astype(np.float64)
        orders = rows.groupby("order_id", sort=True)
        out = pd.DataFrame(
            {
                "items": orders.size().astype(np.float64),
                "order_total": value.groupby(rows["order_id"], sort=True).sum(),
                "resold_share": resold.groupby(rows["order_id"], sort=True).mean(),
            }
        ).reset_index(drop=True)
        out[EVENT_TIME] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")
        return out

    def monitor_outputs(self, outputs: list[Any], spec: FeatureSpec) -> pd.DataFrame:
        fraud = CLASSES.index("fraud")
        return pd.DataFrame({"fraud_probability": [float(o[fraud]) for o in outputs]})


def total_threshold(train: pd.DataFrame, train_y: np.ndarray, test: pd.DataFrame) -> np.ndarray:
    """Class probabilities of test orders from the one cut on the order total that labels
    the training orders best (fraud above it, or below it)."""
    totals = order_totals(train).to_numpy()
    fraud = train_y == CLASSES.index("fraud")
    best = (0.0, np.inf, 1.0)  # accuracy, cut, side
    for cut in np.unique(totals):
        for side in (1.0, -1.0):
            accuracy = float(((side * (totals - cut) > 0) == fraud).mean())
            best = max(best, (accuracy, cut, side))
    _, cut, side = best
    flagged = side * (order_totals(test).to_numpy() - cut) > 0
    p = np.where(flagged, 0.9, 0.1)
    return np.stack([1 - p, p], axis=1)
