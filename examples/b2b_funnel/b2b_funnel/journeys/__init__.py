"""The funnel's journeys, one per module: ``journeys_in`` finds every ``Journey`` here.

- ``development_nurture``: a qualified lead goes to sales, and reads the case study and
  the comparison while sales works it;
- ``proposal_follow_up``: a proposal out, a consultation offer once it has been read.
"""
