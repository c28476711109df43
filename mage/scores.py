"""The two tidy tables every scorer returns (lmms-eval benchmarks, tool calling), one schema.

``scores``: one row per (benchmark, metric, category) with the value and the number of items
behind it; category ``all`` holds the headline numbers. ``items``: one row per scored item,
whether it was answered correctly (the unit that paired tests such as McNemar compare).
The results store adds trial and variant columns in front of these.
"""

SCORE_COLUMNS = ["benchmark", "metric", "category", "value", "n"]
ITEM_COLUMNS = ["benchmark", "item_id", "category", "correct"]
