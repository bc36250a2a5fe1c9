"""The lifecycle's journeys, one per module: ``journeys_in`` finds every ``Journey`` here.

- ``b2b_nurture``: suspect to customer, the whitepaper to the consultation offer;
- ``onboarding``: new customers, welcome and quick start;
- ``nps_survey``: the post-purchase survey, and what each answer leads to;
- ``value_nurture``: passives, a customer story and the newsletter.
"""
