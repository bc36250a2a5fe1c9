"""How this project values its customers, and the products its orders name.

``stagecoach value refresh`` reads both: orders naming a product not in ``CATALOG`` are
left out of the models (and counted in ``stagecoach report value``); ``VALUE`` sets the
currency, the ABC tier's weights and thresholds (attitude: NPS and survey answers;
behaviour: the pipeline's engagement score; consumption: spend), the CLV horizon and how
churn risk weighs recent engagement against probability alive.
"""

from __future__ import annotations

from stagecoach import Catalog, Product, Tier, ValueModel, timedelta

CATALOG = Catalog(
    (
        Product("edge-gateway", "hardware", "Edge gateway"),
        Product("sensor-kit", "hardware", "Vibration sensor kit"),
        Product("sensor-pack", "consumables", "Replacement sensor pack"),
        Product("oee-license", "software", "OEE dashboard licence"),
        Product("energy-module", "software", "Energy monitoring module"),
        Product("service-plan", "services", "Maintenance service plan"),
    )
)
"""The products orders may name (``order.paid`` items' ``product``)."""

VALUE = ValueModel(
    currency="CNY",
    weights={"attitude": 0.3, "behaviour": 0.3, "consumption": 0.4},
    tiers=(Tier("A", 0.7), Tier("B", 0.4), Tier("C", 0.0)),
    engagement_full=100,
    horizon=timedelta(days=365),
    annual_discount=0.10,
    min_customers=20,
    # Churn risk: 1 - (0.7 * probability alive + 0.3 * engagement / engagement_full). The
    # pipeline's dormant detour starts at the high level (DORMANT_RISK).
    churn_engagement_weight=0.3,
    churn_levels=(Tier("high", 0.7), Tier("medium", 0.4), Tier("low", 0.0)),
)
"""The ABC value tier (A: 0.7 and up, B: 0.4 and up, C: the rest), a one-year CLV and the
churn risk levels."""
