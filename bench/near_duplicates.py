"""Near-duplicates of the shared pool: MinHash LSH on instructions and responses over every pool row, and
the embedding kind over a featurized store.

    .venv/bin/python bench/near_duplicates.py [--store <a store featurized with pool_activations>]
                                              [--compare-datasketch ROWS]

Text kinds run on every row of `$NAIT_DATA_DIR/pools` (90k) with `lib/selection/near_duplicates.py`, the code
the `pool_near_duplicates` asset runs; the embedding kind needs stored RDS+ embeddings, so it runs on the
store given (all its kept rows), timed the same way. Prints time, pairs, clusters and the largest cluster of
each kind with its texts; writes bench/results/near_duplicates.json. `--compare-datasketch ROWS` (needs
`pip install datasketch`) clusters the first ROWS responses with datasketch's MinHash and MinHashLSH at the
same shingles, permutations and threshold, side by side: time, and how many rows land in the same cluster.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _largest(table, kind: str, texts: dict, field: str, show: int = 3) -> dict:
    import pyarrow.compute as pc

    members = table.filter(pc.equal(table.column("kind"), kind))
    if not len(members):
        return {}
    sizes = members.sort_by([("cluster_size", "descending"), ("cluster", "ascending")])
    cluster = sizes.column("cluster")[0].as_py()
    ids = members.filter(pc.equal(members.column("cluster"), cluster)).column("example_id").to_pylist()
    return {"cluster": cluster, "size": len(ids), "examples": [{"id": i, field: texts[i][field][:160]} for i in ids[:show]]}


def _multi_member_example(table, kind: str, texts: dict, field: str) -> dict:
    """A cluster of two whose texts differ (a reworded near-duplicate, not an exact one)."""
    import pyarrow.compute as pc

    members = table.filter(pc.equal(table.column("kind"), kind)).to_pylist()
    by_cluster: dict[str, list[str]] = {}
    for row in members:
        by_cluster.setdefault(row["cluster"], []).append(row["example_id"])
    for cluster, ids in sorted(by_cluster.items()):
        if len(ids) == 2 and texts[ids[0]][field] != texts[ids[1]][field]:
            return {"cluster": cluster, "examples": [{"id": i, field: texts[i][field][:160]} for i in ids]}
    return {}


def _compare_datasketch(ids: list[str], texts: list[str]) -> dict:
    import pyarrow as pa
    from datasketch import MinHash, MinHashLSH

    from nait_pipeline.lib.data.text import normalised
    from nait_pipeline.lib.selection import near_duplicates as nd

    started = time.perf_counter()
    signatures, valid = nd.minhash(pa.array(texts))
    ours = nd.clusters(ids, {"response": list(nd.lsh_pairs(signatures, valid))})
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    lsh, hashes, pairs = MinHashLSH(threshold=nd.JACCARD, num_perm=nd.PERMUTATIONS), {}, []
    for i, text in enumerate(normalised(texts)):
        words = text.split()
        shingles = {" ".join(words[k:k + nd.SHINGLE]) for k in range(max(1, len(words) - nd.SHINGLE + 1))} if words else set()
        if shingles:
            hashes[i] = MinHash(num_perm=nd.PERMUTATIONS)
            hashes[i].update_batch([s.encode() for s in shingles])
            lsh.insert(str(i), hashes[i])
    for i, signature in hashes.items():
        pairs += [(i, int(j)) for j in lsh.query(signature) if i < int(j) and signature.jaccard(hashes[int(j)]) >= nd.JACCARD]
    theirs = nd.clusters(ids, {"response": pairs})
    theirs_seconds = time.perf_counter() - started
    a = {r["example_id"]: r["cluster"] for r in ours.to_pylist()}
    b = {r["example_id"]: r["cluster"] for r in theirs.to_pylist()}
    return {"rows": len(ids), "ours_seconds": round(ours_seconds, 2), "datasketch_seconds": round(theirs_seconds, 2),
            "ours_clustered": len(a), "datasketch_clustered": len(b),
            "same_cluster": sum(1 for i in a.keys() & b.keys() if a[i] == b[i])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="store folder with pool_activations for the embedding kind")
    parser.add_argument("--compare-datasketch", type=int, default=0, metavar="ROWS")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nait_pipeline.lib.io.settings import Settings
    from nait_pipeline.lib.selection import near_duplicates as nd

    data_dir = Settings.from_env().data_dir
    pool = pa.concat_tables([pq.read_table(p, columns=["id", "instruction", "input", "output", "source"])
                             for p in sorted((data_dir / "pools").glob("*.parquet"))]).sort_by("id")
    ids = pool.column("id").to_pylist()
    texts = {r["id"]: r for r in pool.to_pylist()}
    prompts = pa.array([f"{i} {x}" for i, x in zip(pool.column("instruction").to_pylist(), pool.column("input").to_pylist())])
    results: dict = {"pool_rows": len(ids)}
    pairs = {}
    for kind, column in (("instruction", prompts), ("response", pool.column("output").combine_chunks())):
        started = time.perf_counter()
        signatures, valid = nd.minhash(column)
        pairs[kind] = list(nd.lsh_pairs(signatures, valid))
        results[kind] = {"seconds": round(time.perf_counter() - started, 2), "pairs": len(pairs[kind])}
    table = nd.clusters(ids, pairs)
    for kind, field in (("instruction", "instruction"), ("response", "output")):
        members = table.filter(pa.compute.equal(table.column("kind"), kind))
        results[kind].update(rows=len(members), clusters=len(set(members.column("cluster").to_pylist())),
                             largest=_largest(table, kind, texts, field),
                             reworded=_multi_member_example(table, kind, texts, field))
    results["groups_text"] = len(set(table.column("group").to_pylist()))
    print(f"{len(ids):,} pool rows")
    for kind in ("instruction", "response"):
        r = results[kind]
        print(f"{kind:12s} {r['seconds']:6.1f} s  {r['pairs']:,} pairs, {r['rows']:,} rows in {r['clusters']:,} clusters; "
              f"largest {r['largest'].get('size')}: {r['largest'].get('examples', [{}])[0]}")
        print(f"{'':12s} reworded: {r['reworded'].get('examples')}")

    if args.store:
        from nait_pipeline.lib.io.layout import LakeLayout

        layout = LakeLayout(Path(args.store) / "lake")
        started = time.perf_counter()
        store_table, stats = nd.find_near_duplicates(layout)
        seconds = time.perf_counter() - started
        members = store_table.filter(pa.compute.equal(store_table.column("kind"), "embedding"))
        results["embedding"] = {**stats["embedding"], "store_rows": stats["pool_rows"], "all_kinds_seconds": round(seconds, 2),
                                "largest": _largest(store_table, "embedding", texts, "instruction"),
                                "reworded": _multi_member_example(store_table, "embedding", texts, "instruction")}
        print(f"embedding    {stats['embedding']['seconds']:6.1f} s  over {stats['pool_rows']:,} stored rows: "
              f"{stats['embedding']['pairs']:,} pairs, {len(members):,} rows in {stats['embedding']['clusters']:,} clusters; "
              f"largest: {results['embedding']['largest'].get('examples', [{}])[:2]}")
    if args.compare_datasketch:
        results["datasketch"] = _compare_datasketch(ids[: args.compare_datasketch],
                                                    pool.column("output").to_pylist()[: args.compare_datasketch])
        print(f"datasketch on {args.compare_datasketch:,} responses: {results['datasketch']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "near_duplicates.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
