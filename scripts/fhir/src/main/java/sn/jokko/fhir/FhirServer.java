package sn.jokko.fhir;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.interceptor.api.IInterceptorService;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.binary.api.IBinaryStorageSvc;
import ca.uhn.fhir.jpa.binstore.MemoryBinaryStorageSvcImpl;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4b.JpaR4BConfig;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import jakarta.persistence.EntityManagerFactory;
import java.lang.management.ManagementFactory;
import java.time.Duration;
import java.util.Properties;
import javax.sql.DataSource;
import org.apache.commons.dbcp2.BasicDataSource;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/**
 * Jokko's test FHIR server: HAPI FHIR's JPA server (FHIR R4B) on an in-memory H2 database,
 * served by Jetty on 127.0.0.1 at /fhir. No Spring Boot: a plain Spring context imports HAPI's
 * own JPA configuration, and this class adds only what an application must supply (the data
 * source, the entity manager factory, the storage settings) with HAPI's default settings.
 *
 * <p>Usage: {@code java -cp 'libs/*:classes' sn.jokko.fhir.FhirServer PORT}. SIGTERM stops it.
 */
public final class FhirServer {

  private FhirServer() {}

  /** The Spring configuration: HAPI's JPA server for R4B plus the beans it expects from us. */
  @Configuration
  @Import({
    JpaR4BConfig.class,
    HapiJpaConfig.class,
    JpaBatch2Config.class,
    Batch2JobsConfig.class,
    // The in-JVM message broker (linked blocking queues) that batch2 jobs run on.
    SubscriptionChannelConfig.class,
    // The thread pool that transactions' parallel work runs on.
    ThreadPoolFactoryConfig.class
  })
  public static class Config {

    @Bean
    public DataSource dataSource() {
      BasicDataSource ds = new BasicDataSource();
      ds.setDriver(new org.h2.Driver());
      // Kept while the JVM lives: the server's whole state goes with its process.
      ds.setUrl("jdbc:h2:mem:jokko;DB_CLOSE_DELAY=-1");
      ds.setUsername("sa");
      ds.setPassword("");
      ds.setMaxTotal(20);
      ds.setMaxWait(Duration.ofSeconds(30));
      return ds;
    }

    @Bean
    public JpaStorageSettings storageSettings() {
      // HAPI's defaults: referential integrity on write, no external references, no
      // placeholder targets, FHIRPath Patch and conditional operations enabled.
      return new JpaStorageSettings();
    }

    @Bean
    public PartitionSettings partitionSettings() {
      return new PartitionSettings();
    }

    @Bean
    public LocalContainerEntityManagerFactoryBean entityManagerFactory(
        ConfigurableListableBeanFactory beanFactory,
        FhirContext fhirContext,
        JpaStorageSettings storageSettings) {
      LocalContainerEntityManagerFactoryBean emf =
          HapiEntityManagerFactoryUtil.newEntityManagerFactory(
              beanFactory, fhirContext, storageSettings);
      emf.setPersistenceUnitName("PU_HapiFhirJpaR4B");
      emf.setDataSource(dataSource());
      Properties jpa = new Properties();
      jpa.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
      jpa.put("hibernate.hbm2ddl.auto", "update");
      jpa.put("hibernate.format_sql", "false");
      jpa.put("hibernate.show_sql", "false");
      // No full-text indexing (no _text/_content searches needed): no Lucene directory.
      jpa.put("hibernate.search.enabled", "false");
      emf.setJpaProperties(jpa);
      return emf;
    }

    @Bean
    @Primary
    public JpaTransactionManager transactionManager(EntityManagerFactory emf) {
      JpaTransactionManager tm = new JpaTransactionManager();
      tm.setEntityManagerFactory(emf);
      return tm;
    }

    @Bean
    public IBinaryStorageSvc binaryStorage() {
      return new MemoryBinaryStorageSvcImpl();
    }
  }

  public static void main(String[] args) {
    try {
      run(args);
    } catch (Throwable e) {
      // Spring's and Jetty's non-daemon threads would keep a half-started server alive.
      e.printStackTrace();
      System.exit(1);
    }
  }

  private static void run(String[] args) throws Exception {
    int port = Integer.parseInt(args.length > 0 ? args[0] : "8080");
    long t0 = System.nanoTime();

    AnnotationConfigApplicationContext ctx = new AnnotationConfigApplicationContext(Config.class);

    FhirContext fhirContext = ctx.getBean(FhirContext.class);
    RestfulServer rest = new RestfulServer(fhirContext, ctx.getBean(IInterceptorService.class));
    rest.registerProviders(
        ctx.getBean(ResourceProviderFactory.class).createProviders());
    rest.registerProvider(ctx.getBean(JpaSystemProvider.class));
    rest.setPagingProvider(ctx.getBean(DatabaseBackedPagingProvider.class));
    rest.setDefaultResponseEncoding(EncodingEnum.JSON);

    Server jetty = new Server();
    ServerConnector http = new ServerConnector(jetty);
    http.setHost("127.0.0.1");
    http.setPort(port);
    jetty.addConnector(http);
    ServletContextHandler handler = new ServletContextHandler();
    handler.setContextPath("/");
    handler.addServlet(new ServletHolder("fhir", rest), "/fhir/*");
    jetty.setHandler(handler);
    jetty.setStopAtShutdown(false);

    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  try {
                    jetty.stop();
                  } catch (Exception e) {
                    e.printStackTrace();
                  }
                  ctx.close();
                },
                "jokko-fhir-shutdown"));

    jetty.start();
    // Wall time depends on what else the machine runs; CPU time says what the start costs.
    com.sun.management.OperatingSystemMXBean os =
        (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();
    System.out.printf(
        "Jokko FHIR server (HAPI FHIR JPA, R4B, H2 in memory) listening on"
            + " http://127.0.0.1:%d/fhir: %.1f s after JVM start (main %.1f s), %.1f CPU s%n",
        port,
        ManagementFactory.getRuntimeMXBean().getUptime() / 1e3,
        (System.nanoTime() - t0) / 1e9,
        os.getProcessCpuTime() / 1e9);
    jetty.join();
  }
}
