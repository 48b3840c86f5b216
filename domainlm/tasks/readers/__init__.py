"""Task readers: each turns one data file (or folder) into :class:`~.base.Example` records.

:mod:`.base` holds what they share (the record, errors that name the place and the fix, the ``on_error: skip``
policy); :mod:`.tagging` reads token-tagging formats (CoNLL, PubTator, BRAT, SOFC-Exp), :mod:`.labelled` one
label per record (PubMedQA, HoC, JSON lines, CSV, FLIP, sentence pairs, FASTA headers), :mod:`.text` unlabelled
text through the document readers and :mod:`.structures` PDB contact maps. ``FORMATS``
(:mod:`domainlm.tasks.builtin`) binds the format names to them.
"""
