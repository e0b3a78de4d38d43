package pipelinedo.testjob;

import java.io.FileWriter;
import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.java.utils.ParameterTool;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.sink.DiscardingSink;
import org.apache.flink.util.Collector;

/**
 * A small streaming job for the Flink runner's REST lifecycle tests.
 *
 * An (effectively) unbounded number sequence, slowed to about 100 elements a
 * second, counts its elements in keyed ValueState and appends "count value" for
 * each to {@code <out>/<tag>.txt}. Stopped with a savepoint and resumed under
 * another tag, the new file's first count shows whether the state (and the
 * source's position) was restored: it continues, it does not start at 1.
 *
 * Arguments: --out DIR --tag NAME [--name JOB_NAME] [--sleep-ms 10]
 */
public final class CounterJob {

    public static void main(String[] args) throws Exception {
        ParameterTool params = ParameterTool.fromArgs(args);
        String out = params.getRequired("out");
        String tag = params.getRequired("tag");
        long sleepMs = params.getLong("sleep-ms", 10L);

        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setParallelism(1);
        env.fromSequence(1, Long.MAX_VALUE).uid("sequence")
            // Slowed beside the source, not in the keyed step: a slow step after the
            // network fills the buffers between them, and a savepoint's barrier (always
            // aligned) then waits behind every buffered element.
            .map(new Throttle(sleepMs)).uid("throttle")
            .keyBy(value -> 0)
            .process(new Count(out + "/" + tag + ".txt")).uid("count")
            .addSink(new DiscardingSink<>()).uid("discard");
        env.execute(params.get("name", "counter-job"));
    }

    /** Passes each element on after {@code sleepMs}: about 1000/sleepMs elements a second. */
    static final class Throttle implements MapFunction<Long, Long> {
        private final long sleepMs;

        Throttle(long sleepMs) {
            this.sleepMs = sleepMs;
        }

        @Override
        public Long map(Long value) throws InterruptedException {
            Thread.sleep(sleepMs);
            return value;
        }
    }

    /** Counts its key's elements in ValueState; appends each count to a file. */
    static final class Count extends KeyedProcessFunction<Integer, Long, Long> {
        private final String path;
        private transient ValueState<Long> count;
        private transient Writer writer;

        Count(String path) {
            this.path = path;
        }

        @Override
        public void open(OpenContext context) throws IOException {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Long.class));
            writer = new FileWriter(path, StandardCharsets.UTF_8, true);
        }

        @Override
        public void processElement(Long value, Context ctx, Collector<Long> collector) throws Exception {
            Long previous = count.value();
            long next = previous == null ? 1L : previous + 1L;
            count.update(next);
            writer.write(next + " " + value + "\n");
            writer.flush();
            collector.collect(next);
        }

        @Override
        public void close() throws IOException {
            if (writer != null) {
                writer.close();
            }
        }
    }
}
