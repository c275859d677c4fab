// hello-java: echoes how many bytes it read, as JSON.
public class Hello {
    public static void main(String[] args) throws Exception {
        byte[] input = System.in.readAllBytes();
        System.out.println("{\"greeting\": \"hello from Java\", \"bytes\": " + input.length + "}");
    }
}
