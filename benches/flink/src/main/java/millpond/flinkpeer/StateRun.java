package millpond.flinkpeer;

import org.HdrHistogram.Histogram;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.JobID;
import org.apache.flink.runtime.state.CheckpointableKeyedStateBackend;
import org.apache.flink.runtime.state.StateBackend;
import org.apache.flink.runtime.state.VoidNamespace;
import org.apache.flink.runtime.state.VoidNamespaceSerializer;
import org.apache.flink.runtime.state.filesystem.FsCheckpointStorageAccess;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ArrayNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.util.InstantiationUtil;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

/**
 * Child JVM 1: the state workload of millpond-bench's `state` on one Flink keyed state backend,
 * then a checkpoint of it taken while updates run, and the MapState phases.
 *
 * <p>Phases, in millpond-bench's order: load every key once (blind writes, in key order), the
 * read-modify-write phase, then gets timed one by one; RSS is read after the gets, where
 * millpond-bench reads it. Then the timeline phase ({@link CheckpointTimeline}): read-modify-write
 * again, with one checkpoint to a local directory taken during it, whose handle is written to the
 * work directory for the restore child; then the MapState phases (after the checkpoint, so that
 * the checkpoint holds the value state only, as millpond's snapshot would).
 */
final class StateRun {
    private StateRun() {}

    static ObjectNode run(Args a) throws Exception {
        Path work = a.work;
        Path db = work.resolve("db");
        Path checkpoints = work.resolve("checkpoints");
        Path tmp = work.resolve("tmp");
        Files.createDirectories(db);
        Files.createDirectories(tmp);
        int vb = a.valueBytes;

        JobID job = new JobID();
        Files.writeString(work.resolve("job-id"), job.toHexString());
        FsCheckpointStorageAccess storage = FlinkState.checkpointStorage(checkpoints, job);
        TaskEnvironment env =
                new TaskEnvironment(job, FlinkState.managedBytes(a.backend, a.memoryBudget), tmp, storage);
        StateBackend stateBackend = FlinkState.load(FlinkState.config(a.backend, db));
        CheckpointableKeyedStateBackend<Long> backend = FlinkState.create(stateBackend, env.env, List.of());
        // What an operator's getRuntimeContext().getState(descriptor) resolves to: the state in
        // the default (void) namespace; value() and update() act on the backend's current key.
        ValueState<byte[]> state =
                backend.getPartitionedState(
                        VoidNamespace.INSTANCE, VoidNamespaceSerializer.INSTANCE, FlinkState.VALUE);
        int[] seq = Measure.keySequence(a.keys, a.zipf);

        // 1. Load: every key once, in order; each value its own array (the heap backend keeps
        // references, and the update phase bumps values in place).
        boolean text = a.values.equals("text");
        System.err.printf("flink-peer: %s: loading %d keys of %d bytes%n", a.backend, a.keys, vb);
        long t0 = System.nanoTime();
        long lastNote = t0;
        for (long k = 0; k < a.keys; k++) {
            backend.setCurrentKey(k);
            state.update(Measure.value(k, vb, text));
            if ((k & 0xffff) == 0 && System.nanoTime() - lastNote > 5e9) {
                lastNote = System.nanoTime();
                System.err.printf("flink-peer: loaded %.1f%%%n", 100.0 * k / a.keys);
            }
        }
        double loadSeconds = (System.nanoTime() - t0) / 1e9;
        long loadRss = Measure.rssBytes();
        long loadPeak = Measure.peakRssBytes();
        System.err.printf("flink-peer: loaded in %.1f s; RSS %d MB%n", loadSeconds, loadRss >> 20);

        // 2. Read-modify-write (millpond's update_with: read, bump the counter, write back).
        Measure.KeyOp readModifyWrite = k -> {
            backend.setCurrentKey(k);
            byte[] v = state.value();
            if (v == null) {
                v = new byte[vb];
            }
            Measure.bump(v);
            state.update(v);
        };
        double updateOps = Measure.timed(a.seconds, seq, readModifyWrite);
        System.err.printf("flink-peer: update %.0f ops/s%n", updateOps);

        // 3. Gets, each timed (setCurrentKey included: a task sets the key for every record).
        Histogram gets = Measure.histogram();
        long[] found = new long[1];
        double getOps = Measure.timedReads(a.seconds, seq, gets, found, k -> {
            backend.setCurrentKey(k);
            return state.value();
        });
        long rss = Measure.rssBytes();
        long peak = Measure.peakRssBytes();
        long localDbBytes = Measure.dirBytes(db);
        System.err.printf("flink-peer: get %.0f ops/s, p99 %d ns; RSS %d MB%n",
                getOps, gets.getValueAtPercentile(99), rss >> 20);

        // 4. Timeline: read-modify-write again for S seconds, with checkpoint 1 taken S/4 into it
        // as a task takes it (sync part on this thread, async part beside it), throughput in
        // 100 ms buckets.
        System.err.printf("flink-peer: timeline: read-modify-write with checkpoint 1 at %.2f s%n",
                a.seconds / 4);
        CheckpointTimeline.Result tl = CheckpointTimeline.run(a.seconds, seq, readModifyWrite, backend, storage, 1);
        long snapshotBytes = Measure.dirBytes(checkpoints);
        long snapshotFiles = Measure.dirFiles(checkpoints);
        // The handle is what the JobManager keeps in the checkpoint's _metadata; the restore
        // child reads it back, as a restarted task gets it from the JobManager.
        byte[] handle = InstantiationUtil.serializeObject(tl.handle());
        Files.write(work.resolve("handle.ser"), handle);
        System.err.printf("flink-peer: checkpoint %d bytes in %d files, %.2f s (sync part %.3f s);"
                        + " update %.0f ops/s during it, %.0f outside%n",
                snapshotBytes, snapshotFiles, tl.snapshotSeconds(), tl.syncSeconds(),
                tl.opsPerSecDuringSnapshot(), tl.opsPerSecOutsideSnapshot());

        ObjectNode mapOut = Main.JSON.createObjectNode();
        // 5. MapState: puts of fresh B-byte values under random user keys 0..M-1 of random keys,
        // then gets of the same kind, each timed.
        if (a.mapEntries > 0) {
            MapState<Long, byte[]> map =
                    backend.getPartitionedState(
                            VoidNamespace.INSTANCE, VoidNamespaceSerializer.INSTANCE, FlinkState.MAP);
            Measure.Rng userKeys = new Measure.Rng(0xabcdef);
            long m = a.mapEntries;
            double putOps = Measure.timed(a.seconds, seq, k -> {
                backend.setCurrentKey(k);
                map.put(userKeys.below(m), new byte[vb]);
            });
            Histogram mapGets = Measure.histogram();
            long[] hits = new long[1];
            double mapGetOps = Measure.timedReads(a.seconds, seq, mapGets, hits, k -> {
                backend.setCurrentKey(k);
                return map.get(userKeys.below(m));
            });
            mapOut.put("map_entries_per_key", a.mapEntries);
            mapOut.put("map_put_ops_per_sec", Math.round(putOps));
            mapOut.put("map_get_ops_per_sec", Math.round(mapGetOps));
            mapOut.put("map_get_ns_p50", mapGets.getValueAtPercentile(50));
            mapOut.put("map_get_ns_p99", mapGets.getValueAtPercentile(99));
            mapOut.put("map_get_ns_p999", mapGets.getValueAtPercentile(99.9));
            mapOut.set("map_get_latency_percentiles", Measure.percentiles(mapGets));
            mapOut.put("map_get_hit_ratio", Measure.round3((double) hits[0] / mapGets.getTotalCount()));
            System.err.printf("flink-peer: map put %.0f ops/s, get %.0f ops/s%n", putOps, mapGetOps);
        }
        long rssAtEnd = Measure.rssBytes();
        long peakAtEnd = Measure.peakRssBytes();
        backend.dispose();
        env.close();

        ObjectNode out = Main.JSON.createObjectNode();
        out.put("bench", "state");
        out.put("peer", "flink");
        out.put("backend", a.backend);
        out.put("backend_class", stateBackend.getClass().getSimpleName());
        out.put("keyed_backend_class", backend.getClass().getSimpleName());
        out.put("flink_version", FlinkState.flinkVersion());
        out.put("keys", a.keys);
        out.put("value_bytes", vb);
        out.put("values", a.values);
        out.put("threads", 1);
        out.put("zipf", a.zipf);
        out.put("seconds_per_phase", a.seconds);
        out.put("state_bytes", a.keys * (8 + vb));
        out.put("key_groups", FlinkState.KEY_GROUPS);
        out.put("memory_budget_bytes", a.memoryBudget);
        out.set("memory_config", Main.JSON.valueToTree(FlinkState.memoryConfig(a)));
        out.put("load_seconds", Measure.round3(loadSeconds));
        out.put("load_rss_bytes", loadRss);
        out.put("load_peak_rss_bytes", loadPeak);
        out.put("update_ops_per_sec", Math.round(updateOps));
        out.put("get_ops_per_sec", Math.round(getOps));
        out.put("gets", gets.getTotalCount());
        out.put("get_misses", gets.getTotalCount() - found[0]);
        out.put("get_ns_p50", gets.getValueAtPercentile(50));
        out.put("get_ns_p99", gets.getValueAtPercentile(99));
        out.put("get_ns_p999", gets.getValueAtPercentile(99.9));
        out.put("get_ns_max", gets.getMaxValue());
        out.set("get_latency_percentiles", Measure.percentiles(gets));
        out.put("rss_bytes", rss);
        out.put("peak_rss_bytes", peak);
        out.put("rss_bytes_at_end", rssAtEnd);
        out.put("peak_rss_bytes_at_end", peakAtEnd);
        out.put("local_db_bytes", localDbBytes);
        out.put("snapshot_kind", a.backend.equals("hashmap")
                ? "full (heap backend: every key group serialized, async copy-on-write)"
                : "incremental (native checkpoint; first one uploads every SST file)");
        out.put("snapshot_seconds", Measure.round3(tl.snapshotSeconds()));
        out.put("snapshot_sync_seconds", Measure.round3(tl.syncSeconds()));
        out.put("snapshot_bytes", snapshotBytes);
        out.put("snapshot_files", snapshotFiles);
        out.put("snapshot_handle_bytes", handle.length);
        out.put("snapshot_mb_per_sec", Math.round(snapshotBytes / tl.snapshotSeconds() / 1e5) / 10.0);
        out.put("snapshot_compression", Measure.round3((double) snapshotBytes / (a.keys * (8 + vb))));
        out.put("timeline_bucket_ms", CheckpointTimeline.BUCKET_NANOS / 1_000_000);
        ArrayNode timelineOps = out.putArray("timeline_ops");
        for (long n : tl.bucketOps()) {
            timelineOps.add(n);
        }
        out.put("timeline_seconds", Measure.round3(tl.phaseNanos() / 1e9));
        out.put("timeline_snapshot_start_s", Measure.round3(tl.snapshotStart() / 1e9));
        out.put("timeline_snapshot_sync_end_s", Measure.round3(tl.syncEnd() / 1e9));
        out.put("timeline_snapshot_end_s", Measure.round3(tl.snapshotEnd() / 1e9));
        out.put("update_ops_per_sec_during_snapshot", Math.round(tl.opsPerSecDuringSnapshot()));
        out.put("update_ops_per_sec_outside_snapshot", Math.round(tl.opsPerSecOutsideSnapshot()));
        out.setAll(mapOut);
        return out;
    }
}
