"""The lifecycle's journeys, one per module: ``journeys_in`` finds every ``Journey`` here.

- ``b2b_nurture``: suspect to customer, the whitepaper to the consultation offer;
- ``onboarding``: new customers, welcome and quick start;
- ``nps_survey``: the post-purchase survey, and what each answer leads to;
- ``value_nurture``: passives, a customer story and the newsletter;
- ``win_back``: dormant customers, a come-back offer;
- ``replenishment``: repeat buyers, a restocking reminder at their own interval;
- ``cross_sell``: bought X, not yet Y, the offer for Y.
"""
