package millpond.flinkpeer;

import org.HdrHistogram.Histogram;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.JobID;
import org.apache.flink.runtime.state.CheckpointableKeyedStateBackend;
import org.apache.flink.runtime.state.KeyedStateHandle;
import org.apache.flink.runtime.state.StateBackend;
import org.apache.flink.runtime.state.VoidNamespace;
import org.apache.flink.runtime.state.VoidNamespaceSerializer;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.util.InstantiationUtil;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;

/**
 * Child JVM 2: restores a fresh keyed state backend from the checkpoint StateRun took, into an
 * empty local directory, and times it from the first line of main, as millpond-bench's
 * recovery-restore does: the first get served (restore_first_record_seconds), then a get of
 * every key (restore_full_seconds), then 100,000 random gets, timed and checked against the
 * loaded values (restored_get_p50_ns / p99_ns).
 *
 * <p>Flink's keyed state backends restore while they are built: RocksDB and ForSt copy ("download")
 * every SST file of the checkpoint into the new instance directory and open the DB; the heap
 * backend reads and deserializes the whole snapshot. No get can be served before build() returns.
 */
final class RestoreRun {
    private RestoreRun() {}

    /** Random gets checked after the full pass (millpond-bench's restore checks 100,000). */
    private static final long RESTORED_GETS = 100_000;

    static ObjectNode run(Args a) throws Exception {
        long start = Main.MAIN_START_NANOS;
        Path work = a.work;
        Path db = work.resolve("restore-db");
        Path tmp = work.resolve("restore-tmp");
        Files.createDirectories(db);
        Files.createDirectories(tmp);
        KeyedStateHandle handle =
                InstantiationUtil.deserializeObject(
                        Files.readAllBytes(work.resolve("handle.ser")), RestoreRun.class.getClassLoader());

        // The same job, restarted: same JobID and checkpoint storage.
        JobID job = JobID.fromHexString(Files.readString(work.resolve("job-id")));
        TaskEnvironment env =
                new TaskEnvironment(
                        job,
                        FlinkState.managedBytes(a.backend, a.memoryBudget),
                        tmp,
                        FlinkState.checkpointStorage(work.resolve("checkpoints"), job));
        StateBackend stateBackend = FlinkState.load(FlinkState.config(a.backend, db));
        System.err.printf("flink-peer: %s: restoring %s%n", a.backend, handle.getClass().getSimpleName());
        long b0 = System.nanoTime();
        double setupSeconds = (b0 - start) / 1e9;
        CheckpointableKeyedStateBackend<Long> backend = FlinkState.create(stateBackend, env.env, List.of(handle));
        double buildSeconds = (System.nanoTime() - b0) / 1e9;
        ValueState<byte[]> state =
                backend.getPartitionedState(
                        VoidNamespace.INSTANCE, VoidNamespaceSerializer.INSTANCE, FlinkState.VALUE);

        // The first record: the last key loaded.
        backend.setCurrentKey(a.keys - 1);
        byte[] first = state.value();
        if (first == null || first.length != a.valueBytes) {
            throw new IllegalStateException("key " + (a.keys - 1) + " was not restored");
        }
        double firstSeconds = (System.nanoTime() - start) / 1e9;
        System.err.printf("flink-peer: first record %.3f s after main (backend build %.3f s)%n",
                firstSeconds, buildSeconds);

        // A full pass: every key, in order, checked.
        long missing = 0;
        for (long k = 0; k < a.keys; k++) {
            backend.setCurrentKey(k);
            byte[] v = state.value();
            if (v == null || v.length != a.valueBytes) {
                missing++;
            }
        }
        double fullSeconds = (System.nanoTime() - start) / 1e9;
        long rss = Measure.rssBytes();
        if (missing > 0) {
            throw new IllegalStateException(missing + " keys missing or wrong after the restore");
        }
        System.err.printf("flink-peer: full pass over %d keys done %.3f s after main%n", a.keys, fullSeconds);

        // Random gets, each timed and checked, as millpond-bench's restore does: the bytes after
        // the counter must be the ones loaded (the counter itself was bumped at random).
        boolean text = a.values.equals("text");
        Histogram h = Measure.histogram();
        Measure.Rng rng = new Measure.Rng(0xc0ffee);
        long checked = Math.min(RESTORED_GETS, Math.max(a.keys, 1));
        for (long i = 0; i < checked; i++) {
            long k = rng.below(a.keys);
            long t = System.nanoTime();
            backend.setCurrentKey(k);
            byte[] got = state.value();
            h.recordValue(Math.max(1, System.nanoTime() - t));
            byte[] want = Measure.value(k, a.valueBytes, text);
            if (got == null || !Arrays.equals(got, 8, got.length, want, 8, want.length)) {
                throw new IllegalStateException("key " + k + ": restored value differs from the loaded one");
            }
        }
        long peak = Measure.peakRssBytes();
        backend.dispose();
        env.close();

        ObjectNode out = Main.JSON.createObjectNode();
        out.put("restore_first_record_seconds", Measure.round3(firstSeconds));
        out.put("restore_full_seconds", Measure.round3(fullSeconds));
        out.put("restore_setup_seconds", Measure.round3(setupSeconds));
        out.put("restore_backend_build_seconds", Measure.round3(buildSeconds));
        out.put("restore_jvm_start_to_main_seconds", Main.JVM_UPTIME_AT_MAIN_MS / 1000.0);
        out.put("restore_keys_checked", a.keys);
        out.put("restored_gets_checked", checked);
        out.put("restored_get_p50_ns", h.getValueAtPercentile(50));
        out.put("restored_get_p99_ns", h.getValueAtPercentile(99));
        out.set("restored_get_latency_percentiles", Measure.percentiles(h));
        out.put("restore_rss_bytes", rss);
        out.put("restore_peak_rss_bytes", peak);
        out.set("restore_metrics", Main.JSON.valueToTree(FlinkState.RESTORE_METRICS));
        return out;
    }
}
