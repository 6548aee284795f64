"""How sample/orders.csv was made: web-shop orders, one row per item, some of them fraud.

    python sample/make_orders.py    # seeded: writes the very same file again

Synthetic. A fraudulent order here is not told by its total: it is told by what is in the
basket together (gift cards and electronics bought in several units, few everyday items),
which is what a set model learns and a threshold on the total misses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = ("grocery", "apparel", "electronics", "gift_card")
# Each category's share of the items of an honest order and of a fraudulent one.
HONEST = (0.55, 0.30, 0.12, 0.03)
FRAUD = (0.15, 0.20, 0.40, 0.25)
# Typical unit price of each category (a lognormal's median) and gift cards' face values.
PRICE = {"grocery": 4.0, "apparel": 35.0, "electronics": 180.0}
GIFT_CARD_VALUES = (25.0, 50.0, 100.0)
FRAUD_SHARE = 0.3
COLUMNS = ["order_id", "line", "price", "quantity", "category", "label"]


def order_items(rng: np.random.Generator, fraud: bool) -> list[tuple[float, float, str]]:
    """(unit price, quantity, category) of each item of one order."""
    size = int(rng.integers(1, 5)) if fraud else int(rng.integers(1, 10))
    categories = rng.choice(CATEGORIES, size, p=FRAUD if fraud else HONEST)
    items = []
    for category in categories:
        if category == "gift_card":
            price = float(rng.choice(GIFT_CARD_VALUES))
        else:
            price = float(PRICE[category] * rng.lognormal(0.0, 0.5))
        resold = fraud and category in ("electronics", "gift_card")
        quantity = float(rng.integers(2, 6) if resold else rng.integers(1, 3))
        items.append((round(price, 2), quantity, str(category)))
    return items


def make_orders(orders: int = 600, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(1, orders + 1):
        fraud = bool(rng.random() < FRAUD_SHARE)
        label = "fraud" if fraud else "ok"
        for line, (price, quantity, category) in enumerate(order_items(rng, fraud), start=1):
            rows.append((f"o-{number:05d}", line, price, quantity, category, label))
    return pd.DataFrame(rows, columns=COLUMNS)


if __name__ == "__main__":
    path = Path(__file__).with_name("orders.csv")
    make_orders().to_csv(path, index=False)
    print(f"wrote {path}")
