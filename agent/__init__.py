"""The hospital agent: SS-MIX2 reader, consent, diff, seal, ship."""
