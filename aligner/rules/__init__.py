"""Finding rules: records in, typed findings out; one module per family, text in :mod:`.messages`.

* :mod:`.divergence`  first divergences, buffers, parameter gradients, NaN/Inf, output shapes, optimizer steps
* :mod:`.gradients`   gradient status against the reference's pattern; the explained sparse pattern
* :mod:`.structure`   inventory, count drift, weight transfer, unmatched calls, noise reference weights
* :mod:`.modes`       training flags, BN eps/momentum, dropout rates
* :mod:`.init`        the port's own initialisation
* :mod:`.loss`        loss total and items
* :mod:`.order`       the one order of findings
* :mod:`.pair`        what a model pair adds (:meth:`aligner.pairs.base.Pair.rules`)
"""
