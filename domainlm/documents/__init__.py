"""Document readers: streaming parsers that turn input files into :class:`~.readers.Document` objects.

Both ``corpus prepare`` (:mod:`domainlm.corpora`) and bench's unlabelled-text tasks
(:mod:`domainlm.tasks.readers.text`) read files through these, so one format has one parser and one meaning.
The package sits below both and imports nothing from either.

* :mod:`.readers` -- the :class:`~.readers.Document` record, the skip log, gzip handling and the plain-text,
  JSON-lines, CSV and arXiv readers;
* :mod:`.pubmed` -- PubMed XML and MEDLINE; :mod:`.proteins` -- FASTA and Swiss-Prot;
* :mod:`.registry` -- the table of built-in formats, :func:`~.registry.register_reader`, ``--format auto``
  detection, input resolution and the driver that runs readers over a file list.

An outsider adds a format with :func:`domainlm.documents.registry.register_reader`; the name is then a
valid ``--format`` (and ``format:`` in recipes and corpus cards).
"""
