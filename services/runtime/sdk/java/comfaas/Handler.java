// comfaas.Handler: a warm Java handler for comfaas (handler mode).
//
// The executor compiles this file with every `java` bundle. In handler mode
// the entry class implements it and has a public no-argument constructor:
//
//     public class Echo implements comfaas.Handler {
//         private int calls; // kept between calls: one JVM serves many
//         public byte[] handle(byte[] input) throws Exception {
//             return input;
//         }
//     }
//
// and the runtime starts `java comfaas.Handler Echo`, which creates one
// instance and serves calls with it. A handler that throws fails that call
// (its stack trace is the error) and the worker goes on serving.
// System.out is redirected to System.err: the real stdout carries the
// protocol (documented in the README, the same for every runtime).
package comfaas;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;

/** A function served by a warm worker: one call per invocation. */
public interface Handler {
    /** The output for one input; throwing fails this call only. */
    byte[] handle(byte[] input) throws Exception;

    /** What the worker writes to stderr after each call. */
    byte[] CALL_END = "\0comfaas-call-end\0".getBytes(StandardCharsets.ISO_8859_1);

    /** Serves calls with `handler` until stdin closes. */
    static void serve(Handler handler) throws IOException {
        DataInputStream in =
                new DataInputStream(new BufferedInputStream(new FileInputStream(FileDescriptor.in)));
        DataOutputStream out = new DataOutputStream(
                new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16));
        // The function's prints must not corrupt the protocol.
        System.setOut(System.err);
        frame(out, 2, "ready".getBytes(StandardCharsets.US_ASCII));
        while (true) {
            int n;
            try {
                n = in.readInt();
            } catch (EOFException closed) {
                return;
            }
            byte[] input = new byte[n];
            in.readFully(input);
            int status = 0;
            byte[] output;
            try {
                output = handler.handle(input);
                if (output == null) {
                    output = new byte[0];
                }
            } catch (Exception e) {
                StringWriter trace = new StringWriter();
                e.printStackTrace(new PrintWriter(trace));
                // Last, like a Python traceback: the error's one-line summary.
                trace.append(e.toString()).append('\n');
                status = 1;
                output = trace.toString().getBytes(StandardCharsets.UTF_8);
            }
            // What the call printed, then the marker, then the answer.
            System.err.flush();
            System.err.write(CALL_END, 0, CALL_END.length);
            System.err.flush();
            frame(out, status, output);
        }
    }

    private static void frame(DataOutputStream out, int status, byte[] data) throws IOException {
        out.writeByte(status);
        out.writeInt(data.length);
        out.write(data);
        out.flush();
    }

    /** Runs the handler class named by the first argument. */
    static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java comfaas.Handler CLASS");
            System.exit(2);
        }
        Class<?> type = Class.forName(args[0]);
        if (!Handler.class.isAssignableFrom(type)) {
            System.err.println(args[0] + " does not implement comfaas.Handler");
            System.exit(3);
        }
        Handler handler = (Handler) type.getDeclaredConstructor().newInstance();
        serve(handler);
    }
}
