// Creates CCT's topics and the ACLs of each handler principal on the local broker, as the
// bundle's KafkaUser resources do in a cluster (components/kafka.py). Run as a single-file
// source program with the broker's jars on the class path:
//   java -cp 'libs/*' KafkaAcls.java <bootstrap> <admin password file> <spec file> <CA file>
// It connects as every client does: SCRAM over TLS, verifying the broker against the CA.
// The spec has one line per grant: `topic|group <literal|prefixed> <name> <principal> <op>...`,
// and `create <topic>` lines for the topics to create.
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class KafkaAcls {
    public static void main(String[] args) throws Exception {
        String password = Files.readString(Path.of(args[1])).strip();
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("security.protocol", "SASL_SSL");
        props.put("ssl.truststore.type", "PEM");
        props.put("ssl.truststore.location", args[3]);
        props.put("sasl.mechanism", "SCRAM-SHA-512");
        props.put(
            "sasl.jaas.config",
            "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\""
                + " password=\"" + password + "\";");
        List<AclBinding> bindings = new ArrayList<>();
        List<NewTopic> topics = new ArrayList<>();
        for (String line : Files.readAllLines(Path.of(args[2]))) {
            String[] f = line.strip().split("\\s+");
            if (f.length == 0 || f[0].isEmpty()) {
                continue;
            }
            if (f[0].equals("create")) {
                topics.add(new NewTopic(f[1], 3, (short) 1));
                continue;
            }
            ResourceType type = f[0].equals("topic") ? ResourceType.TOPIC : ResourceType.GROUP;
            PatternType pattern = f[1].equals("prefixed") ? PatternType.PREFIXED : PatternType.LITERAL;
            for (int i = 4; i < f.length; i++) {
                bindings.add(new AclBinding(
                    new ResourcePattern(type, f[2], pattern),
                    new AccessControlEntry(
                        "User:" + f[3], "*", AclOperation.fromString(f[i]), AclPermissionType.ALLOW)));
            }
        }
        try (Admin admin = Admin.create(props)) {
            for (NewTopic topic : topics) {
                try {
                    admin.createTopics(List.of(topic)).all().get();
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) {
                        throw e;
                    }
                }
            }
            admin.createAcls(bindings).all().get();
        }
        System.out.println("kafka: " + topics.size() + " topics, " + bindings.size() + " ACLs");
    }
}
