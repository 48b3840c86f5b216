"""The datatrove steps of ``domainlm corpus prepare``, one module per stage.

The run is a chain of datatrove stages (each stage one executor, local, Slurm or Ray; see run.py):

1. ``read``: :class:`ReadClean`: our readers (every bad-record policy and drop count kept), cleaning and
   the length filters, the reading-comprehension conversion (``--reading-comprehension``: the document
   followed by tasks mined from it, :mod:`domainlm.corpora.comprehension`), the n-gram decontamination check (``--decontaminate``: datatrove's filter with our
   index of the bench suites' test texts), and tokenisation: :class:`TokenLog` encodes the kept documents
   in batches and writes their ids to ``WORK/tokens/<rank>.arrow``, so the cleaned text is written again
   only when a later stage must re-read it (PubMed updates with deduplication: ``WORK/docs``). Each task
   reads a *contiguous* run of input files, so (task, position) order is the input order on any task count.
2. ``updates`` (PubMed, several XML files): :class:`ResolveKeys` keyed by PMID, on disk. Every task
   wrote (PMID, file, position, deleted?) records into hash partitions; one task per partition sorts
   them and marks every version older than the PMID's last file as ``superseded`` (or ``deleted`` when
   that file deletes it). Memory is one partition, not the corpus.
3. ``hash`` (in the read stage when there is no update barrier): :class:`ExactKeys` writes 64-bit text
   hashes into partitions; :class:`Signature` is datatrove's MinHash stage 1 with our shingles.
4. ``exact`` (:class:`ResolveKeys`, first occurrence wins) and datatrove's MinHash buckets (stage 2)
   and clusters (stage 3), all on disk.
5. ``pack`` (one task per read task): :class:`PackTask` reads only its own task's token ids, drops what
   stages 2-4 and the decontamination check removed, and writes that task's blocks (``train/<rank>.tokens``,
   ``validation/<rank>.tokens``: uint16 or uint32 ids), document starts and document table.
6. ``index`` (one small task): :class:`Index` reads the pack tasks' *counts* (a prefix sum gives each task's
   first global document index) and writes manifest.json. No stage reads every task's tokens.

Steps 2-4 are skipped when their option is off. Intermediate files live in ``OUT/.work`` (with
datatrove's completion markers, so an interrupted run resumes task by task) and are removed at the end.

The modules, in pipeline order (each imports only :mod:`.base`, the shared step class and counts, and the steps it
runs inside it; none imports another stage's module back):

* :mod:`.base`: :class:`~.base.Step` (datatrove's ``PipelineStep`` with the work folder), the per-task counts
  files, each task's input files, the whitespace word tokenizer of our n-grams, the removal records' layout;
* :mod:`.read`: stage 1 (:class:`~.read.ReadClean`) and the re-read of the cleaned text (:class:`~.read.ReadDocs`);
* :mod:`.keys`: the keyed stages: PubMed updates and exact duplicates (key files, resolution, drops);
* :mod:`.minhash`: near-duplicates: datatrove's MinHash stage 1 with our shingles, and the LSH shape;
* :mod:`.decontaminate`: the n-gram test-set index and filter (``--decontaminate``);
* :mod:`.tokenise`: :class:`~.tokenise.TokenLog`, the token ids the read stage writes;
* :mod:`.pack`: :class:`~.pack.PackTask`, one task's blocks and document table;
* :mod:`.index`: :class:`~.index.Index`, the counts' prefix sums -> manifest.json.
"""
